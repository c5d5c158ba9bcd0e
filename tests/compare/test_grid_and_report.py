"""gapo.compare.grid and .report: the t-intervals over seeds, the `dvc exp show --json` parser, queueing, markdown and figure."""
from __future__ import annotations

import math
import os

import pytest

from gapo.compare import grid as C
from gapo.compare import report as R


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_table(df, expected):
    assert R.t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_t_quantile_other_confidence_and_bounds():
    assert R.t_quantile(0.95, 4) == pytest.approx(2.1318, abs=2e-4)  # 90% two-sided
    with pytest.raises(ValueError):
        R.t_quantile(0.4, 3)


def test_t_interval():
    ci = R.t_interval([0.5, 0.6, 0.7])
    assert ci["mean"] == pytest.approx(0.6) and ci["std"] == pytest.approx(0.1) and ci["n"] == 3
    assert ci["half"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
    one = R.t_interval([0.4, None, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.4 and math.isnan(one["half"])
    assert R.t_interval([])["n"] == 0


def rec(method, paradigm, seed, acc, cats):
    return {"method": method, "paradigm": paradigm, "seed": seed,
            "metrics": {"prompt_level_strict_acc": acc,
                        "by_category": {c: {"inst_level_strict_acc": v, "count": 10} for c, v in cats.items()}}}


RECORDS = [
    rec("gapo", "pp", 1, 0.80, {"keywords": 0.9, "length_constraints": 0.5}),
    rec("gapo", "pp", 2, 0.90, {"keywords": 1.0, "length_constraints": 0.7}),
    rec("gapo", "pr", 1, 0.70, {"keywords": 0.8}),
    rec("gapo", "pr", 2, 0.60, {"keywords": 0.6}),
    rec("dpo", "pp", 1, 0.30, {"keywords": 0.2, "length_constraints": 0.1}),
    rec("dpo", "pp", 2, 0.40, {"keywords": 0.4, "length_constraints": 0.1}),
    rec("sft", "pp", 1, 0.50, {}),
]


def test_build_tables_shapes_and_numbers():
    t = R.build_tables(RECORDS)
    assert t["categories"] == ["keywords", "length_constraints"]
    assert list(t["main"]) == ["pp", "pr"]
    assert list(t["main"]["pp"]) == ["gapo", "sft", "dpo"]  # the paper's row order, not alphabetical
    g = t["main"]["pp"]["gapo"]
    assert g["seeds"] == [1, 2] and g["overall"]["mean"] == pytest.approx(0.85)
    assert g["overall"]["half"] == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    assert g["length_constraints"]["mean"] == pytest.approx(0.6)
    assert t["main"]["pr"]["gapo"]["length_constraints"]["n"] == 0  # category absent in that run
    assert math.isnan(t["main"]["pp"]["sft"]["overall"]["half"])
    # PP vs PR only for methods run in both; delta paired by seed: (0.8-0.7, 0.9-0.6)
    assert list(t["pp_vs_pr"]) == ["gapo"]
    d = t["pp_vs_pr"]["gapo"]["delta"]
    assert d["mean"] == pytest.approx(0.2) and d["n"] == 2
    assert t["pp_vs_pr"]["gapo"]["pr"]["mean"] == pytest.approx(0.65)


def test_render_markdown():
    md = R.render_markdown(R.build_tables(RECORDS), {"grid": "test"})
    assert "| method | n | overall | keywords | length_constraints |" in md
    half = 12.7062 * math.sqrt(0.005) / math.sqrt(2) * 100
    assert f"| gapo | 2 | 85.0 ± {half:.1f} | 95.0 ± " in md
    assert "| sft | 1 | 50.0 | – | – |" in md
    assert "## Preferential Prompt vs Preferential Response" in md and "| gapo | 85.0 ± " in md
    assert "- grid: test" in md


def test_records_from_exp_show_nested_json():
    def node(name, method, acc):
        return {"rev": name[:7], "name": name, "data": {
            "rev": name[:7], "params": {"params.yaml": {"data": {"method": method, "paradigm": "pp", "seed": 1}}},
            "metrics": {"metrics/evaluate.json": {"data": {"prompt_level_strict_acc": acc}}}}}
    doc = [{"rev": "workspace", "data": {"params": {"params.yaml": {"data": {"method": "gapo"}}}, "metrics": {}}},
           {"rev": "abc", "data": {"params": {}}, "experiments": [
               {"revs": [node("cmp-x-gapo-pp-s1", "gapo", 0.5)]}, {"revs": [node("cmp-x-dpo-pp-s1", "dpo", 0.25)]}]}]
    recs = C.records_from_exp_show(doc)
    assert [(r["name"], r["metrics"]["prompt_level_strict_acc"]) for r in recs] == [
        ("cmp-x-gapo-pp-s1", 0.5), ("cmp-x-dpo-pp-s1", 0.25)]


def test_grid_names_ignore_only_the_axes():
    from gapo.config import load_params

    a = load_params(None, ["method=dpo", "seed=3", "train_seed=5", "compare.seeds=[1]"])
    b = load_params(None, ["method=gapo", "paradigm=pr"])
    assert C.grid_id(a) == C.grid_id(b)
    assert C.grid_id(load_params(None, ["sft.max_steps=7"])) != C.grid_id(b)
    assert len(C.grid(a)) == 7 * 2 * 1
    assert C.exp_name("ab", "dpo", "pp", 3) == "cmp-ab-dpo-pp-s3"


def test_plot_compare_writes_a_png(tmp_path):
    out = R.plot_compare(R.build_tables(RECORDS), tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    cells = [{"paradigm": "pp", "method": "gapo", "acc": 0.85, "ci_low": 0.8, "ci_high": 0.875, "seeds": [1, 2]}]
    out = R.plot_compare(R.build_tables(RECORDS), tmp_path / "pooled.png", cells)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bar_values_pooled_cells_or_t_interval():
    tables = R.build_tables(RECORDS)
    # without pooled cells: mean over seeds, symmetric t-interval; 2 seeds 0.80, 0.90: sd/sqrt(2) = 0.05, t = 12.706
    v, lo, hi = R.bar_values(tables)["pp"]["gapo"]
    assert v == pytest.approx(85.0) and lo == hi == pytest.approx(63.53, abs=0.01)
    # with them: the cell's own accuracy and its asymmetric interval over prompts, and only the cells given
    cells = [{"paradigm": "pp", "method": "gapo", "acc": 0.85, "ci_low": 0.8, "ci_high": 0.875, "seeds": [1, 2]},
             {"paradigm": "pr", "method": "sft", "acc": 0.5, "ci_low": 0.4, "ci_high": 0.6, "seeds": [1]}]
    bars = R.bar_values(tables, cells)
    assert bars["pp"]["gapo"] == pytest.approx((85.0, 5.0, 2.5))
    assert bars["pr"] == {"sft": pytest.approx((50.0, 10.0, 10.0))} and set(bars["pp"]) == {"gapo"}


def _fake_dvc(monkeypatch, show) -> list:
    """DVC faked for the queueing step: `dvc exp show --json` answers `show`, every other call is recorded in the
    returned list (`--run-all` as the run of the queue); tmp_path is no git repository, so no grid on another commit."""
    calls = []

    def fake_dvc(args, cwd, capture=True):
        calls.append(args)
        return __import__("json").dumps(show) if args[:2] == ["exp", "show"] else ""

    monkeypatch.setattr(C, "_dvc", fake_dvc)
    monkeypatch.setattr(C, "_head", lambda ws: "f" * 40)
    monkeypatch.setattr(C, "_run_queue", lambda ws, jobs, **kw: calls.append(["exp", "run", "--run-all", "--jobs",
                                                                              str(jobs)]) or True)
    # no git repository either: every experiment and the workspace are one code, and no samples can be read
    monkeypatch.setattr(C, "_code_at", lambda ws, rev, target: "c0de")
    monkeypatch.setattr(C, "_workspace_code", lambda ws, target: "c0de")
    monkeypatch.setattr(C, "_sample_verdicts", lambda ws, rev: None)
    return calls


def test_queue_skips_finished_points_and_restores_params(tmp_path, monkeypatch):
    """The queueing step alone (DVC faked): a point whose named experiment is in `dvc exp show` is not queued."""
    from gapo.config import load_params
    from gapo.paths import Workspace

    params = load_params(None, ["compare.methods=[sft]", "compare.paradigms=[pp]", "compare.seeds=[1,2]"])
    done = C.exp_name(C.grid_id(params), "sft", "pp", 1)
    show = [{"rev": "abc", "experiments": [{"revs": [{"name": done, "data": {
        "params": {"params.yaml": {"data": {"method": "sft"}}},
        "metrics": {"metrics/evaluate.json": {"data": {"prompt_level_strict_acc": 0.5}}}}}]}]}]
    calls = _fake_dvc(monkeypatch, show)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    info = C.queue_and_run(params, Workspace(tmp_path))
    queued = [a for a in calls if "--queue" in a]
    assert info["queued"] == 1 and info["reused"] == 1
    assert len(queued) == 1 and queued[0][queued[0].index("-n") + 1] == C.exp_name(C.grid_id(params), "sft", "pp", 2)
    assert ["exp", "run", "--run-all", "--jobs", "1"] in calls
    assert (tmp_path / "params.yaml").read_text() == "seed: 1\n"
    # an interrupted call left s2 in DVC's queue: it runs with this call's --run-all, it is not queued twice
    calls.clear()
    s2 = C.exp_name(C.grid_id(params), "sft", "pp", 2)
    show[0]["experiments"].append({"revs": [{"name": s2, "data": {"params": {}, "metrics": {}}}],
                                   "executor": {"state": "queued", "name": "dvc-task"}, "name": s2})
    info = C.queue_and_run(params, Workspace(tmp_path))
    assert (info["queued"], info["already_queued"], info["reused"]) == (0, 1, 1)
    assert not [a for a in calls if "--queue" in a] and ["exp", "run", "--run-all", "--jobs", "1"] in calls
    # both finished: no queue, no run
    calls.clear()
    show[0]["experiments"][-1] = {"revs": [{"name": s2, "data": show[0]["experiments"][0]["revs"][0]["data"]}],
                                  "executor": {"state": "success"}, "name": s2}
    info = C.queue_and_run(params, Workspace(tmp_path))
    assert (info["queued"], info["already_queued"], info["reused"]) == (0, 0, 2)
    assert not any("run" in a for a in calls)


def test_a_point_queued_late_keeps_its_grid_place(tmp_path, monkeypatch):
    """s1 must be queued again (say it was restarted) while s2 and s3 wait in DVC's FIFO queue: they are removed and
    queued again behind it, so the queue runs s1, s2, s3 rather than s2, s3, s1."""
    from gapo.config import load_params
    from gapo.paths import Workspace

    params = load_params(None, ["compare.methods=[sft]", "compare.paradigms=[pp]", "compare.seeds=[1,2,3]"])
    s1, s2, s3 = (C.exp_name(C.grid_id(params), "sft", "pp", k) for k in (1, 2, 3))
    show = [{"rev": "abc", "experiments": [{"revs": [{"name": n, "data": {"params": {}, "metrics": {}}}],
                                            "executor": {"state": "queued", "name": "dvc-task"}, "name": n}
                                           for n in (s2, s3)]}]
    calls = _fake_dvc(monkeypatch, show)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    info = C.queue_and_run(params, Workspace(tmp_path))
    assert (info["queued"], info["requeued_in_order"], info["already_queued"]) == (1, 2, 0)
    assert ["queue", "remove", s2, s3] in calls
    assert [a[a.index("-n") + 1] for a in calls if "--queue" in a] == [s1, s2, s3]
    # nothing to add: the waiting points stay where they are
    show[0]["experiments"].insert(0, {"revs": [{"name": s1, "data": {"params": {}, "metrics": {}}}],
                                      "executor": {"state": "queued", "name": "dvc-task"}, "name": s1})
    calls.clear()
    info = C.queue_and_run(params, Workspace(tmp_path))
    assert (info["queued"], info["requeued_in_order"], info["already_queued"]) == (0, 0, 3)
    assert not any(a[:2] == ["queue", "remove"] or "--queue" in a for a in calls)


def test_a_running_grid_is_left_alone(tmp_path, monkeypatch):
    from gapo.config import load_params
    from gapo.paths import Workspace

    params = load_params(None, ["compare.methods=[sft]", "compare.paradigms=[pp]", "compare.seeds=[1,2]"])
    s1, s2 = (C.exp_name(C.grid_id(params), "sft", "pp", k) for k in (1, 2))
    show = [{"rev": "abc", "experiments": [
        {"revs": [{"name": s1, "data": {}}], "executor": {"state": "running", "local": {"pid": 4242}}, "name": s1},
        {"revs": [{"name": s2, "data": {}}], "executor": {"state": "queued"}, "name": s2}]}]
    assert C.live_from_exp_show(show, lambda pid: True) == {s1}
    assert C.live_from_exp_show(show, lambda pid: False) == set()
    calls = _fake_dvc(monkeypatch, show)
    monkeypatch.setattr(C, "process_alive", lambda pid: pid == 4242)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(C.CompareError, match=f"is running in DVC's queue \\({s1}\\)"):
        C.queue_and_run(params, Workspace(tmp_path))
    assert all(a[:2] == ["exp", "show"] for a in calls)  # nothing killed, removed or queued


def test_baselines_from_git_and_the_one_commit_rule():
    base, head = "75" + "4" * 38, "e9" + "1" * 38
    refs = "\n".join([f"refs/exps/75/{'4' * 38}/cmp-abcd1234-sft-pp-s1", f"refs/exps/75/{'4' * 38}/cmp-abcd1234-gapo-pp-s1",
                      f"refs/exps/e9/{'1' * 38}/cmp-ffff0000-sft-pp-s1",  # another grid
                      f"refs/exps/e9/{'1' * 38}/my-own-exp", "refs/exps/celery/stash", "refs/exps/exec/EXEC_BASELINE"])
    stash = "\n".join([f"commit: dvc-exp:{base}:{base}:cmp-abcd1234-dpo-pp-s1",
                       f"commit: dvc-exp:{head}:{head}:cmp-abcd1234-kto-pp-s1", "commit: something else"])
    found = C.baselines_from_git(refs, stash, "abcd1234")
    assert found == {base: {"finished": 2, "queued": 1}, head: {"finished": 0, "queued": 1}}
    assert C.finished_from_git(refs, "abcd1234") == {"cmp-abcd1234-sft-pp-s1": base, "cmp-abcd1234-gapo-pp-s1": base}
    C.check_one_baseline({head: found[head]}, head, "abcd1234")  # all on HEAD: fine
    C.check_one_baseline({}, head, "abcd1234")  # a new grid: fine
    C.check_one_baseline({base: {"finished": 2, "queued": 0}}, head, "abcd1234")  # finished elsewhere: the ledger's
    with pytest.raises(C.CompareError) as err:
        C.check_one_baseline(found, head, "abcd1234")
    msg = str(err.value)
    assert "(7544444: 1 queued) and HEAD is e911111" in msg
    assert "`git checkout 7544444`" in msg and "dvc queue remove --queued" in msg and "\n" not in msg


def test_pending_from_exp_show():
    doc = [{"rev": "abc", "experiments": [
        {"name": "a", "executor": {"state": "queued"}, "revs": []},
        {"name": "b", "executor": {"state": "running"}, "revs": []},
        {"name": "c", "executor": {"state": "success"}, "revs": []},
        {"name": "d", "executor": {"state": "failed"}, "revs": []}, {"name": "e", "revs": []}]}]
    assert C.pending_from_exp_show(doc) == {"a", "b"}


def test_stale_running_experiments_are_not_pending():
    doc = [{"rev": "abc", "experiments": [
        {"name": "live", "executor": {"state": "running", "local": {"pid": 11}}, "revs": []},
        {"name": "dead", "executor": {"state": "running", "local": {"pid": 22}}, "revs": []},
        {"name": "no_pid", "executor": {"state": "running", "local": None}, "revs": []},
        {"name": "queued", "executor": {"state": "queued", "local": {"pid": 22}}, "revs": []}]}]
    alive = {11: True, 22: False}.__getitem__
    assert C.stale_from_exp_show(doc, alive) == {"dead"}  # only a running task can be stale; no pid: trust DVC
    assert C.pending_from_exp_show(doc, alive) == {"live", "no_pid", "queued"}


def test_process_alive():
    import os
    import subprocess
    import sys

    assert C.process_alive(os.getpid()) is False  # pytest is alive but is no DVC executor
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert C.process_alive(child.pid) is False


def test_queue_worker_alive(tmp_path):
    import subprocess
    import sys

    ws = tmp_path / "ws"
    ws.mkdir()
    assert not C.queue_worker_alive(ws)
    # a process whose command line names a queue worker, started in the workspace
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exp", "queue-worker"], cwd=ws)
    try:
        import time

        deadline = time.monotonic() + 10  # until the child has exec'd: before, /proc shows the parent's cmdline
        while not C.queue_worker_alive(ws) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert C.queue_worker_alive(ws) and not C.queue_worker_alive(tmp_path)
    finally:
        worker.kill()
        worker.wait()
    assert not C.queue_worker_alive(ws)
    assert C.queue_worker_alive(ws, proc=tmp_path / "no-proc")  # no /proc: never taken for dead


def _fake_dvc_bin(tmp_path, monkeypatch, run_all: str):
    """A `dvc` on PATH whose `exp run --run-all` runs `run_all`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dvc"
    script.write_text(f'#!/bin/sh\nif [ "$1 $2" = "exp run" ]; then {run_all}; fi\n')
    script.chmod(0o755)
    env = dict(__import__("os").environ)
    monkeypatch.setattr(C, "_dvc_env", lambda: {**env, "PATH": f"{bin_dir}:{env['PATH']}"})


def test_run_queue_gives_up_on_a_dead_worker_and_returns_when_done(tmp_path, monkeypatch):
    from gapo.paths import Workspace

    _fake_dvc_bin(tmp_path, monkeypatch, "echo $$ > pid; exec sleep 600")  # no worker process anywhere
    assert C._run_queue(Workspace(tmp_path), 1, poll_s=0.2) is False  # `--run-all` hangs with no worker
    pid = int((tmp_path / "pid").read_text())
    assert not C.process_alive(pid) and not __import__("os").path.exists(f"/proc/{pid}/cmdline")  # killed
    (tmp_path / "bin").rename(tmp_path / "old")
    monkeypatch.setattr(C, "queue_worker_alive", lambda root: True)
    _fake_dvc_bin(tmp_path, monkeypatch, "sleep 1; exit 0")
    assert C._run_queue(Workspace(tmp_path), 1, poll_s=0.2) is True
    (tmp_path / "bin").rename(tmp_path / "old2")
    _fake_dvc_bin(tmp_path, monkeypatch, "exit 3")
    with pytest.raises(C.CompareError, match="exited with status 3"):
        C._run_queue(Workspace(tmp_path), 1, poll_s=0.2)


def test_run_grid_starts_a_dead_worker_again_then_gives_up(tmp_path, monkeypatch):
    from gapo.config import load_params
    from gapo.paths import Workspace

    params = load_params(None, ["compare.worker_restarts=2"])
    died = iter([True, True, False])
    monkeypatch.setattr(C, "queue_and_run", lambda p, ws: {"queued": 0, "worker_died": next(died)})
    assert C.run_grid(params, Workspace(tmp_path)) == {"queued": 0, "worker_restarts": 2}
    monkeypatch.setattr(C, "queue_and_run", lambda p, ws: {"queued": 0, "worker_died": True})
    with pytest.raises(C.CompareError, match="worker died 3 times"):
        C.run_grid(params, Workspace(tmp_path))


def test_dvc_env_puts_the_experiment_copy_first_on_pythonpath(monkeypatch):
    # a stage of a queued experiment runs in its copy of the repository: "." first makes it import that copy's gapo
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert C._dvc_env()["PYTHONPATH"].split(os.pathsep) == [".", "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    assert C._dvc_env()["PYTHONPATH"] == "."


def test_the_ledger_carries_a_grid_to_a_fresh_clone(tmp_path, monkeypatch):
    """A finished experiment gets its ledger entry; in a clone without DVC's experiments the entry alone counts as
    finished, while an entry of other code stops the run before anything is queued."""
    from gapo.compare import ledger as L
    from gapo.config import load_params
    from gapo.paths import Workspace

    params = load_params(None, ["compare.methods=[sft]", "compare.paradigms=[pp]", "compare.seeds=[1,2]"])
    s1, s2 = (C.exp_name(C.grid_id(params), "sft", "pp", k) for k in (1, 2))
    show = [{"rev": "abc", "experiments": [{"revs": [{"name": s1, "rev": "e" * 40, "data": {
        "params": {"params.yaml": {"data": {"method": "sft"}}},
        "metrics": {"metrics/evaluate.json": {"data": {"prompt_level_strict_acc": 0.5}}}}}]}]}]
    calls = _fake_dvc(monkeypatch, show)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert C.queue_and_run(params, Workspace(tmp_path))["queued"] == 1
    (entry,) = L.read_ledger(tmp_path / "reports" / "compare_runs", C.grid_id(params)).values()
    assert (entry["name"], entry["code"], entry["seed"], entry["metrics"]) == (s1, "c0de", 1, {
        "prompt_level_strict_acc": 0.5})

    clone = tmp_path / "clone"
    (clone / "reports").mkdir(parents=True)
    (clone / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "reports" / "compare_runs").rename(clone / "reports" / "compare_runs")
    calls = _fake_dvc(monkeypatch, [])  # no experiment in this clone's DVC
    info = C.queue_and_run(params, Workspace(clone))
    assert (info["queued"], info["reused"]) == (1, 1)
    assert [a[a.index("-n") + 1] for a in calls if "--queue" in a] == [s2]

    calls.clear()
    monkeypatch.setattr(C, "_workspace_code", lambda ws, target: "beef")  # the clone's training code changed
    with pytest.raises(L.LedgerError, match="holds 1 finished experiments of other code"):
        C.queue_and_run(params, Workspace(clone))
    assert not [a for a in calls if "--queue" in a or "--run-all" in a]
