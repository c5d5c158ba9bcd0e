"""Concurrent runs. The design (docs/reliability.md): one pipeline run per workspace, enforced by OS file locks
(`.gapo/pipeline.lock` for a flow run, `.gapo/stage.lock` for every `gapo <stage>`); concurrent runs use separate
workspaces (a clone / worktree, or DVC's own `dvc exp run --temp/--queue` workspaces) that share the MLflow store
and the registry, where each flow run has its own parent run and promotion is serialised by the registry lock."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import time

import pytest
from tests.reliability.rel_helpers import run, start, tracked_env, venv_bin

from gapo.errors import GapoError
from gapo.io import workspace_lock


def _hold(root: str, name: str, ready, stop) -> None:
    with workspace_lock(root, name, "test holder"):
        ready.set()
        stop.wait(120)


@pytest.fixture
def held_lock(tmp_path):
    """Another process holding a workspace lock: yields a function (name) -> None that starts it."""
    ctx = mp.get_context("spawn")
    procs = []

    def hold(name: str) -> None:
        ready, stop = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_hold, args=(str(tmp_path), name, ready, stop))
        p.start()
        assert ready.wait(120)
        procs.append((p, stop))

    yield hold
    for p, stop in procs:
        stop.set()
        p.join(30)


def test_second_writer_in_one_workspace_is_refused(tmp_path, held_lock):
    held_lock("pipeline")
    t0 = time.time()
    with pytest.raises(GapoError, match=r"busy, pid \d+ \(test holder\) holds \.gapo/pipeline\.lock.*separate "
                                        r"workspaces"):
        with workspace_lock(tmp_path, "pipeline", "second run"):
            pass
    assert time.time() - t0 < 5  # a flow run fails at once, before it writes params.yaml


def test_stage_waits_for_the_lock_then_fails_with_one_line(tmp_path, held_lock):
    held_lock("stage")
    env = tracked_env(None, GAPO_TRACKING="off", GAPO_WORKSPACE_LOCK_TIMEOUT_S="2")
    proc = subprocess.run([venv_bin("gapo"), "--workdir", str(tmp_path), "prepare"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "busy" in lines[0] and "waited 2 s" in lines[0], proc.stderr
    assert not (tmp_path / "data").exists()


def test_lock_of_a_killed_holder_is_free(tmp_path):
    """kill -9 never leaves a stale lock behind (the OS drops it with the process)."""
    code = ("import time, sys; from gapo.io import workspace_lock\n"
            "with workspace_lock(sys.argv[1], 'pipeline', 'victim'):\n    print('held', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    with workspace_lock(tmp_path, "pipeline", "next run"):
        pass


@pytest.mark.slow
def test_two_flow_runs_with_different_params_at_once(crashed, tmp_path):
    """Two Prefect flow runs, different params, started together in two workspaces (copies of the finished crash
    repo) that share one MLflow store and one registry lock: each keeps its own checkpoints, metrics and MLflow
    runs, and the registry ends consistent (each version's gate saw the champion of the moment)."""
    import mlflow

    base, _, _, _ = crashed
    store = tmp_path / "shared"
    store.mkdir()
    shutil.copy2(base / "mlflow.db", store / "mlflow.db")
    shutil.copytree(base / "mlartifacts", store / "mlartifacts")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    runs = {"a": ["adversarial.rounds=1"], "b": ["evaluate.max_prompts=4"]}
    roots, procs = {}, {}
    for name in runs:
        roots[name] = tmp_path / name
        shutil.copytree(base, roots[name], symlinks=True, ignore=shutil.ignore_patterns(".prefect-home", ".gapo"))
    t0 = time.time()
    for name, sets in runs.items():
        env = tracked_env(roots[name], MLFLOW_TRACKING_URI=uri, GAPO_REGISTRY_LOCK_DIR=str(store / "locks"))
        cmd = [sys.executable, "flows/gapo_pipeline.py"] + [a for s in sets for a in ("-S", s)]
        procs[name] = start(cmd, roots[name], env, tmp_path / f"{name}.log")
    for name, p in procs.items():
        assert p.wait(timeout=3600) == 0, (tmp_path / f"{name}.log").read_text(errors="replace")[-6000:]
    print(f"two concurrent flow runs: {time.time() - t0:.0f} s")
    # each workspace holds its own result
    final_a = json.loads((roots["a"] / "checkpoints" / "final" / "final.json").read_text())
    final_b = json.loads((roots["b"] / "checkpoints" / "final" / "final.json").read_text())
    assert final_a["rounds"] == 1 and final_b["rounds"] == 2
    assert json.loads((roots["b"] / "metrics" / "evaluate.json").read_text())["num_prompts"] == 4
    assert json.loads((roots["a"] / "metrics" / "evaluate.json").read_text())["num_prompts"] == 6
    for name in runs:
        assert json.loads(run([venv_bin("dvc"), "status", "--json"], roots[name]).stdout or "{}") == {}
    # each flow run has its own parent MLflow run; its stage runs carry its own params and workspace
    client = mlflow.MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("gapo")
    parents = {}
    for name in runs:
        found = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`gapo.role` = 'pipeline' and tags.`gapo.workspace` = '{roots[name]}'"))
        assert len(found) == 1, (name, len(found))
        parents[name] = found[0]
        kids = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{found[0].info.run_id}'")
        assert {r.data.tags["gapo.stage"] for r in kids} >= {"evaluate", "register"}
        for r in kids:
            assert r.data.tags["gapo.workspace"] == str(roots[name])
            assert r.data.params["adversarial.rounds"] == ("1" if name == "a" else "2")
            assert r.data.params["evaluate.max_prompts"] == ("6" if name == "a" else "4")
    # registry: two new versions; the later decision saw the earlier one's outcome
    regs = {n: json.loads((roots[n] / "metrics" / "register.json").read_text()) for n in runs}
    versions = sorted(r["policy_version"] for r in regs.values())
    assert versions[1] == versions[0] + 1
    tags = {v: client.get_model_version("gapo-policy", str(v)).tags for v in versions}

    def champion_after(v):  # the champion once v's gate had decided
        return str(v) if tags[v]["gate.verdict"] == "promoted" else tags[v]["gate.champion_version"]

    # serialised: one of the two decided first, and the other's gate compared against the outcome of that decision
    orders = [(x, y) for x, y in (versions, versions[::-1]) if tags[y]["gate.champion_version"] == champion_after(x)]
    assert orders, {v: (tags[v]["gate.verdict"], tags[v]["gate.champion_version"]) for v in versions}
    assert str(client.get_model_version_by_alias("gapo-policy", "champion").version) in \
        {champion_after(second) for _, second in orders}
