"""`gapo compare`: the paper's comparison (methods x paradigms x seeds) on the user's data, as queued DVC experiments.

1. The merged params (params.yaml + profile + -S) become the experiments' baseline params.yaml for the time it takes
   to queue them (DVC stashes the workspace per queued experiment; the file is restored afterwards).
2. Each grid point is `dvc exp run --queue -S method=M -S paradigm=P -S <compare.seed_param>=S -n <name> <target>`;
   a point with an entry in the grid's ledger (gapo.compare.ledger: one committed JSON per finished experiment, so
   that a fresh clone continues the grid) is not queued again, nor is one still queued or running in DVC's queue
   from an interrupted call (this call's --run-all runs it). One DVC lists as running whose executor process is gone
   (the grid was killed mid-experiment) is failed, removed and queued again. A grid runs on one code: with ledger
   entries of another code fingerprint than the workspace's, or experiments queued on another commit, nothing is
   queued and the error says how to go on (`check_same_code`, `check_one_baseline`).
3. `dvc exp run --run-all --jobs <compare.jobs>` runs the queue (local workers; no network), and each finished
   experiment is written to the ledger at the next one-minute poll (`sync_ledger`). When DVC's queue worker dies
   with experiments still queued (`--run-all` would wait for ever), step 2 and 3 run again (`run_grid`).
4. The ledger's entries give every experiment's metrics/evaluate.json; `build_tables` (pure) turns the
   grid's records into mean and t-interval over seeds per method (rows) x overall + per constraint category
   (columns), per paradigm, plus the PP-vs-PR table; `render_markdown` writes reports/compare.md and
   `plot_compare` reports/compare.png (each cell pooled over its seeds, the interval over prompts, from step 5).
   Both are logged to the stage's MLflow run (gapo.tracking).
5. Each entry's per-prompt verdicts (read at sync from the experiment's reports/eval_samples.jsonl through DVC) pair
   the methods prompt by prompt: gapo.compare.claims tests the paper's orderings and PP vs PR (paired bootstrap,
   McNemar, Holm), appended to reports/compare.md and compare.json.

API (pure): `records_from_exp_show(doc)`, `pending_from_exp_show(doc)`, `queued_from_exp_show(doc)`,
`live_from_exp_show(doc, alive)`, `stale_from_exp_show(doc, alive)`, `baselines_from_git(refs, stash_log, gid)`,
`finished_from_git(refs, gid)`, `check_one_baseline(found, head, gid)`, `grid(params)`, `grid_id(params)`;
(I/O) `sync_ledger(ws, params, doc)`, `queue_and_run(params, ws)`, `run_grid(params, ws)`,
`run_compare(params, ws, collect_only)`. The tables and figure are gapo.compare.report's.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from gapo.config import Params
from gapo.errors import GapoError
from gapo.compare.report import build_tables, plot_compare, render_markdown
from gapo.paths import Workspace


class CompareError(GapoError):
    """A failed DVC command or an unusable experiment table (one line)."""


# ============================================================================================ exp show (pure)
def _dict_nodes(doc: Any):
    """Every dict in a `dvc exp show --json` document, depth first in document order (DVC 3 nests experiments
    under commits, and the nesting differs between versions)."""
    if isinstance(doc, dict):
        yield doc
        children = doc.values()
    elif isinstance(doc, list):
        children = doc
    else:
        return
    for v in children:
        if isinstance(v, (dict, list)):
            yield from _dict_nodes(v)


def records_from_exp_show(doc: Any) -> list[dict]:
    """`dvc exp show --json` -> [{name, rev, params (params.yaml), metrics (metrics/evaluate.json)}] for every
    experiment (and the workspace / baseline commits) that has both. Tolerant of DVC 3's nesting."""
    out: list[dict] = []
    for node in _dict_nodes(doc):
        data = node.get("data")
        if isinstance(data, dict) and "params" in data:
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            metrics = ((data.get("metrics") or {}).get("metrics/evaluate.json") or {}).get("data") or {}
            if params and metrics:
                out.append({"name": node.get("name") or data.get("name"), "rev": node.get("rev") or data.get("rev"),
                            "params": params, "metrics": metrics})
    return out


def pending_from_exp_show(doc: Any, alive: Callable[[int], bool] = lambda pid: True) -> set[str]:
    """Names of the experiments DVC's queue holds as queued or running (`executor.state` in `dvc exp show --json`):
    they have no metrics yet, and queueing one of them again would run it twice. A running one whose executor
    process (`executor.local.pid`) is not `alive` is left out: see `stale_from_exp_show`."""
    stale = stale_from_exp_show(doc, alive)
    return {str(node["name"]) for node in _dict_nodes(doc)
            if isinstance(node.get("executor"), dict) and node["executor"].get("state") in ("queued", "running")
            and node.get("name")} - stale


def queued_from_exp_show(doc: Any) -> set[str]:
    """Names of the experiments waiting in DVC's queue (not started)."""
    return {str(node["name"]) for node in _dict_nodes(doc)
            if isinstance(node.get("executor"), dict) and node["executor"].get("state") == "queued" and node.get("name")}


def live_from_exp_show(doc: Any, alive: Callable[[int], bool]) -> set[str]:
    """Names of the experiments running now: state `running` and a live executor."""
    return pending_from_exp_show(doc, alive) - queued_from_exp_show(doc)


def stale_from_exp_show(doc: Any, alive: Callable[[int], bool]) -> set[str]:
    """Experiments DVC still lists as running whose executor process is gone: a grid killed mid-experiment (a
    machine or session that ended) leaves its task `running` with no worker, and `dvc exp run --run-all` would then
    wait for it forever. They are failed with `dvc queue kill --force` and queued again."""
    out = set()
    for node in _dict_nodes(doc):
        ex = node.get("executor")
        if isinstance(ex, dict) and ex.get("state") == "running" and node.get("name"):
            pid = (ex.get("local") or {}).get("pid")
            if isinstance(pid, int) and not alive(pid):
                out.add(str(node["name"]))
    return out


def process_alive(pid: int) -> bool:
    """A live process with that pid that is a DVC executor, `dvc exp exec-run` (a recycled pid does not count)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:  # no /proc (macOS): signal 0 only says whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return b"exec-run" in cmdline  # `dvc exp exec-run`, the process DVC records as the executor


# ============================================================================================ DVC orchestration
def _dvc_env() -> dict:
    """This interpreter's bin directory first on PATH: `dvc` and the stages' `gapo` commands are the ones installed
    beside it, even when the caller's PATH does not name the venv."""
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # An experiment runs in its own copy of the repository (.dvc/tmp/exps/...), and its stages must import that copy's
    # gapo, the code of the experiment's commit. The `gapo` entry point of an editable install would import the
    # workspace's instead, where someone may be editing while the grid runs. "." is the stage's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (".", env.get("PYTHONPATH", "")) if p)
    return env


def _dvc_cmd(args: list[str]) -> tuple[list[str], dict]:
    """(the command line of `dvc ARGS`, its environment): the `dvc` installed beside this interpreter."""
    import shutil

    env = _dvc_env()
    return [shutil.which("dvc", path=env["PATH"]) or "dvc", *args], env


def _dvc(args: list[str], cwd: Path, capture: bool = True) -> str:
    cmd, env = _dvc_cmd(args)
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=capture)
    if proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-3:] if capture else []
        raise CompareError(f"compare: `{' '.join(cmd)}` exited with status {proc.returncode}"
                           + (f": {' | '.join(tail)}" if tail else ""))
    return proc.stdout or ""


def grid(params: Params) -> list[tuple[str, str, int]]:
    c = params.compare
    # seed-major: a queue stopped early (`dvc queue stop --kill`, then `--collect-only`) leaves every method and
    # paradigm with the seeds finished so far, i.e. a full table with wider intervals rather than missing rows
    return [(m, p, s) for s in c.seeds for p in c.paradigms for m in c.methods]


def grid_id(params: Params) -> str:
    """Names the grid's configuration: the merged params minus the three grid axes and the compare section, so a
    rerun with the same configuration reuses finished experiments and a changed one never does."""
    tree = params.model_dump(mode="json")
    for k in ("method", "paradigm", "seed", "train_seed", "compare"):
        tree.pop(k, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]


def exp_name(gid: str, method: str, paradigm: str, seed: int) -> str:
    return f"cmp-{gid}-{method}-{paradigm}-s{seed}"


def _exp_show(ws: Workspace, rev: Optional[str] = None) -> Any:
    return json.loads(_dvc(["exp", "show", "--json", *(["--rev", rev] if rev else [])], ws.root) or "[]")


def baselines_from_git(refs: str, stash_log: str, gid: str) -> dict[str, dict[str, int]]:
    """{commit: {"finished": n, "queued": n}} of grid `gid`'s experiments, from `git for-each-ref
    --format=%(refname) refs/exps` (a finished experiment is refs/exps/<sha[:2]>/<sha[2:]>/<name>) and `git log -g
    --format=%gs refs/exps/celery/stash` (a queued one is DVC's stash entry "...dvc-exp:<baseline>:<rev>:<name>")."""
    out: dict[str, dict[str, int]] = {}
    for baseline in finished_from_git(refs, gid).values():
        out.setdefault(baseline, {"finished": 0, "queued": 0})["finished"] += 1
    for line in stash_log.splitlines():
        _, _, entry = line.partition("dvc-exp:")
        fields = entry.strip().split(":")
        if len(fields) == 3 and fields[2].startswith(f"cmp-{gid}-"):
            out.setdefault(fields[0], {"finished": 0, "queued": 0})["queued"] += 1
    return out


def finished_from_git(refs: str, gid: str) -> dict[str, str]:
    """{experiment name: baseline commit} of grid `gid`'s finished experiments, from `git for-each-ref
    --format=%(refname) refs/exps`."""
    out = {}
    for line in refs.splitlines():
        parts = line.strip().split("/")
        if len(parts) == 5 and parts[:2] == ["refs", "exps"] and parts[4].startswith(f"cmp-{gid}-"):
            out[parts[4]] = parts[2] + parts[3]
    return out


def _git_out(ws: Workspace, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ws.root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""  # no repository or no such ref yet: nothing there


def _exp_refs(ws: Workspace) -> str:
    return _git_out(ws, "for-each-ref", "--format=%(refname)", "refs/exps")


def grid_baselines(ws: Workspace, gid: str) -> dict[str, dict[str, int]]:
    return baselines_from_git(_exp_refs(ws), _git_out(ws, "log", "-g", "--format=%gs", "refs/exps/celery/stash"), gid)


def _head(ws: Workspace) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws.root, capture_output=True, text=True,
                          check=True).stdout.strip()


def check_one_baseline(found: dict[str, dict[str, int]], head: str, gid: str) -> None:
    """Experiments of the grid still queued on another commit would run that commit's code beside this one's: refuse,
    and say how to go on. (Finished ones on another commit are fine: the ledger keeps them with their code
    fingerprint, and `check_same_code` decides whether this workspace may continue them.)"""
    other = {c: n for c, n in found.items() if c != head and n["queued"]}
    if other:
        where = "; ".join(f"{c[:7]}: {n['queued']} queued" for c, n in sorted(other.items()))
        first = sorted(other)[0][:7]
        raise CompareError(f"compare: grid {gid} has experiments queued on another commit ({where}) and HEAD is "
                           f"{head[:7]}; run them with `git checkout {first}` then `gapo compare`, or drop them with "
                           f"`dvc queue remove --queued`")


def collect(ws: Workspace, params: Params, doc: Any = None) -> list[dict]:
    """The grid's finished experiments (by name) as {method, paradigm, seed, name, metrics}."""
    doc = _exp_show(ws) if doc is None else doc
    gid = grid_id(params)
    wanted = {exp_name(gid, m, p, s): (m, p, s) for m, p, s in grid(params)}
    out = {}
    for r in records_from_exp_show(doc):
        if r["name"] in wanted:
            m, p, s = wanted[r["name"]]
            out[r["name"]] = {"method": m, "paradigm": p, "seed": s, "name": r["name"], "rev": r["rev"],
                              "metrics": r["metrics"]}
    return list(out.values())


SAMPLES = "reports/eval_samples.jsonl"  # the evaluate stage's per-prompt verdicts (a DVC out, in the cache)


def _sample_verdicts(ws: Workspace, rev: Optional[str]) -> Optional[list[dict]]:
    """The IFEval verdicts of an experiment's reports/eval_samples.jsonl at its commit, read through DVC from the
    workspace's cache; None when they cannot be read (a gc'ed cache)."""
    import dvc.api

    from gapo.compare.ledger import verdict_rows

    try:
        with dvc.api.open(SAMPLES, repo=str(ws.root), rev=rev) as fh:
            return verdict_rows(json.loads(line) for line in fh if line.strip())
    except Exception:  # noqa: BLE001 - its cell is left out of the paired claims and named in the report
        return None


def _code_at(ws: Workspace, rev: str, target: str) -> str:
    from gapo.compare.ledger import fingerprint_at

    return fingerprint_at(ws.root, rev, target)


def _workspace_code(ws: Workspace, target: str) -> str:
    from gapo.compare.ledger import fingerprint_of_workspace

    return fingerprint_of_workspace(ws.root, target)


def ledger_dir(ws: Workspace, params: Params) -> Path:
    return ws.root / params.compare.ledger  # an absolute compare.ledger stays as it is


def sync_ledger(ws: Workspace, params: Params, doc: Any = None) -> dict[str, dict]:
    """Every finished DVC experiment of the grid gets its ledger entry (gapo.compare.ledger), then the ledger's
    entries of this grid's points are returned by name. `doc` is a `dvc exp show --json` of HEAD already at hand;
    experiments on other commits are read with `--rev`. Cheap when nothing finished since the last call: one
    `git for-each-ref` and the ledger's files."""
    from gapo.compare.ledger import make_entry, read_ledger, write_entry

    gid, directory = grid_id(params), ledger_dir(ws, params)
    names = {exp_name(gid, *g) for g in grid(params)}
    entries = read_ledger(directory, gid)
    finished = finished_from_git(_exp_refs(ws), gid)

    def add(d: Any) -> None:
        for r in collect(ws, params, d):
            if r["name"] not in entries:
                entry = make_entry(r, gid, _code_at(ws, r["rev"], params.compare.target), finished.get(r["name"], ""),
                                   _sample_verdicts(ws, r["rev"]),
                                   _git_out(ws, "show", "-s", "--format=%cI", r["rev"] or "").strip())
                write_entry(directory, entry)
                entries[r["name"]] = entry

    if doc is not None:
        add(doc)
    for baseline in sorted({b for n, b in finished.items() if n not in entries}):
        add(_exp_show(ws, baseline))
    return {n: e for n, e in entries.items() if n in names}


def _sync_quietly(ws: Workspace, params: Params) -> None:
    """The ledger while the queue runs, after each experiment: a grid killed later keeps what finished. A failed
    sync is retried at the next poll and at collection, never allowed to stop the grid."""
    import sys

    try:
        sync_ledger(ws, params)
    except Exception as e:  # noqa: BLE001
        print(f"compare: ledger not updated this time ({e})", file=sys.stderr)


def queue_and_run(params: Params, ws: Workspace) -> dict:
    from gapo.io import atomic_file

    gid = grid_id(params)
    check_one_baseline(grid_baselines(ws, gid), _head(ws), gid)
    doc = _exp_show(ws)
    names = {exp_name(gid, *g) for g in grid(params)}
    live = sorted(names & live_from_exp_show(doc, process_alive))
    if live:
        # Its queue worker holds DVC's repository lock until the queue is empty: queueing would fail half-way.
        raise CompareError(f"compare: grid {gid} is running in DVC's queue ({live[0]}); follow it with `dvc queue "
                           f"status` and rerun when it has finished, or after `dvc queue stop --kill`")
    stale = sorted(names & stale_from_exp_show(doc, process_alive))
    if stale:
        _dvc(["queue", "kill", "--force", *stale], ws.root)
        _dvc(["queue", "remove", *stale], ws.root)
        doc = _exp_show(ws)
    from gapo.compare.ledger import check_same_code

    entries = sync_ledger(ws, params, doc)
    check_same_code(entries, _workspace_code(ws, params.compare.target), gid, params.compare.ledger)
    done = set(entries)
    # A grid interrupted during its run leaves its unfinished points in DVC's queue: they run with this call's
    # --run-all instead of being queued a second time.
    pending = names & pending_from_exp_show(doc, process_alive) - done
    todo = [(m, p, s) for m, p, s in grid(params) if exp_name(gid, m, p, s) not in done | pending]
    waiting = names & queued_from_exp_show(doc) - done if todo else set()
    if waiting:
        # DVC's queue is first in, first out: a point queued now (a restarted one, say) would run after everything
        # waiting. The waiting points are queued again with it in grid order, so that a grid stopped early still has
        # whole seeds.
        _dvc(["queue", "remove", *sorted(waiting)], ws.root)
        pending -= waiting
        todo = [(m, p, s) for m, p, s in grid(params) if exp_name(gid, m, p, s) not in done | pending]
    params_file = ws.root / "params.yaml"
    original = params_file.read_bytes() if params_file.exists() else None
    base = params.model_copy(deep=True)
    try:
        with atomic_file(params_file) as fh:  # the experiments' baseline: profile and -S included
            from gapo.config import render_params_yaml

            fh.write(render_params_yaml(base))
        for m, p, s in todo:
            _dvc(["exp", "run", "--queue", "-S", f"method={m}", "-S", f"paradigm={p}",
                  "-S", f"{params.compare.seed_param}={s}",
                  "-n", exp_name(gid, m, p, s), params.compare.target], ws.root)
    finally:
        if original is not None:
            with atomic_file(params_file, "wb") as fh:
                fh.write(original)
    t0 = time.perf_counter()
    worker_died = bool(todo or pending) and not _run_queue(ws, params.compare.jobs,
                                                           on_poll=lambda: _sync_quietly(ws, params))
    return {"queued": len(todo) - len(waiting), "requeued_in_order": len(waiting), "already_queued": len(pending),
            "reused": len(done), "restarted": len(stale), "worker_died": worker_died,
            "run_s": round(time.perf_counter() - t0, 1)}


def queue_worker_alive(root: Path, proc: Path = Path("/proc")) -> bool:
    """Whether a `dvc exp queue-worker` runs in workspace `root`. Read from /proc rather than `dvc queue status`,
    which pings the workers through the same file-system broker whose race killed one (and on a system without
    /proc, True: never taken for a dead worker)."""
    if not proc.is_dir():
        return True
    root = Path(root).resolve()
    for entry in proc.iterdir():
        try:
            if entry.name.isdigit() and b"queue-worker" in (entry / "cmdline").read_bytes():
                if Path(os.readlink(entry / "cwd")).resolve() == root:
                    return True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return False


def _run_queue(ws: Workspace, jobs: int, poll_s: float = 60.0, on_poll: Callable[[], None] = lambda: None) -> bool:
    """`dvc exp run --run-all` until it returns (True), or until DVC's queue worker is gone while it still waits
    (False): the worker can die between experiments (kombu's file-system broker raised JSONDecodeError on a message,
    2026-12-06), and `--run-all` then waits forever with experiments still queued."""
    import signal

    cmd, env = _dvc_cmd(["exp", "run", "--run-all", "--jobs", str(jobs)])
    # Output streams to the terminal: a grid takes long and the per-stage progress is the only sign of life.
    proc = subprocess.Popen(cmd, cwd=ws.root, env=env, start_new_session=True)
    misses = 0
    while True:
        try:
            code = proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            on_poll()
            # two polls in a row, so that a worker still starting is not taken for a dead one
            misses = 0 if queue_worker_alive(ws.root) else misses + 1
            if misses < 2:
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False
        if code != 0:
            raise CompareError(f"compare: `dvc exp run --run-all` exited with status {code}")
        return True


def run_grid(params: Params, ws: Workspace) -> dict:
    """queue_and_run, again after a dead queue worker (it fails what the worker left running, keeps the grid order
    and starts a new worker), at most compare.worker_restarts times."""
    for attempt in range(params.compare.worker_restarts + 1):
        info = queue_and_run(params, ws)
        if not info.pop("worker_died"):
            return {**info, "worker_restarts": attempt}
    raise CompareError(f"compare: DVC's queue worker died {params.compare.worker_restarts + 1} times; see "
                       ".dvc/tmp/exps/celery/*.out, then rerun `gapo compare`")


def run_compare(params: Params, ws: Workspace, collect_only: bool = False) -> dict:
    from gapo.io import atomic_file

    info = ({"queued": 0, "requeued_in_order": 0, "already_queued": 0, "reused": 0, "restarted": 0, "run_s": 0.0}
            if collect_only else run_grid(params, ws))
    # The report is the ledger's: the experiments of this machine's DVC and those a clone brought along. A run has
    # just checked that they are all of the workspace's code; --collect-only reads the grid as it ran, even from
    # code the workspace has since moved on from, but never a grid of two codes.
    entries = sync_ledger(ws, params)
    if not entries:
        raise CompareError(f"compare: no finished experiment of grid {grid_id(params)} in the ledger "
                           f"{params.compare.ledger} or `dvc exp show` ({len(grid(params))} expected); see "
                           "`dvc queue status` / `dvc queue logs`")
    codes = sorted({e["code"] for e in entries.values()})
    if len(codes) > 1:  # at least one code is not the workspace's: check_same_code raises and names it
        from gapo.compare.ledger import check_same_code

        check_same_code(entries, _workspace_code(ws, params.compare.target), grid_id(params), params.compare.ledger)
    records = [{k: e[k] for k in ("name", "method", "paradigm", "seed", "rev", "metrics")}
               for _, e in sorted(entries.items())]
    c = params.compare
    tables = build_tables(records, c.metric, c.confidence)
    from gapo.compare.claims import build_claims, per_prompt, render_claims, summarize

    samples = {n: per_prompt(e["samples"], c.metric) for n, e in entries.items() if e["samples"] is not None}
    unreadable = sorted(n for n, e in entries.items() if e["samples"] is None)
    claims = build_claims(records, samples, c.metric, params.evaluate.paired_resamples, params.seed,
                          round(1 - c.confidence, 9), c.confidence)
    missing = sorted(set(exp_name(grid_id(params), *g) for g in grid(params)) - {r["name"] for r in records})
    meta = {"grid": f"methods {', '.join(c.methods)} × paradigms {', '.join(c.paradigms)} × seeds "
                    f"{', '.join(map(str, c.seeds))} ({len(records)}/{len(grid(params))} experiments finished)",
            "grid id": f"`{grid_id(params)}` (experiment names `{exp_name(grid_id(params), 'METHOD', 'P', 0)[:-2]}"
                       "sSEED`)",
            "test prompts": _num_prompts(records),
            "code": f"fingerprint `{codes[0]}` (gapo.compare.ledger), baseline commits "
                    f"{', '.join(sorted({e['baseline'][:7] for e in entries.values() if e['baseline']})) or '?'}",
            "ledger": f"{params.compare.ledger}/, one JSON per finished experiment"}
    if missing:
        meta["missing"] = ", ".join(missing)
    if unreadable:
        meta["no per-prompt answers (left out of the claims)"] = ", ".join(unreadable)
    ws.reports.mkdir(parents=True, exist_ok=True)
    md, png, js = ws.reports / "compare.md", ws.reports / "compare.png", ws.reports / "compare.json"
    with atomic_file(md) as fh:
        fh.write(render_markdown(tables, meta) + "\n" + render_claims(claims))
    plot_compare(tables, png, claims["cells"])
    paper = [{k: c[k] for k in ("id", "claim", "status")} for c in summarize(claims)]
    with atomic_file(js) as fh:
        fh.write(json.dumps({"tables": _jsonable(tables), "claims": _jsonable(claims), "paper_claims": paper,
                             "records": records},
                            indent=2, sort_keys=True))
    _log_to_mlflow(tables, [md, png, js], claims, paper)
    return {"report": str(md), "figure": str(png), "experiments": len(records), "expected": len(grid(params)),
            **info, "paper_claims": {c["id"]: c["status"] for c in paper},
            "overall": {p: {m: round(r["overall"]["mean"], 4) for m, r in rows.items()}
                                for p, rows in tables["main"].items()}}


def _num_prompts(records: list[dict]) -> str:
    ns = sorted({r["metrics"].get("num_prompts") for r in records if r["metrics"].get("num_prompts") is not None})
    return ", ".join(map(str, ns)) or "?"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def _log_to_mlflow(tables: dict, files: list[Path], claims: Optional[dict] = None,
                   paper: Sequence[dict] = ()) -> None:
    """Into the `compare` stage's MLflow run (opened by gapo.tracking's stage wrapper); nothing when untracked."""
    from gapo.tracking import backend

    if not backend.tracking_enabled():
        return
    import mlflow

    if mlflow.active_run() is None:
        return
    metrics = {}
    for paradigm, rows in tables["main"].items():
        for method, row in rows.items():
            for k in ("mean", "half"):
                v = row["overall"][k]
                if not math.isnan(v):
                    metrics[f"compare/{paradigm}/{method}/{k}"] = v
    for row in (claims or {}).get("method_order", []) + (claims or {}).get("pp_vs_pr", []):
        where = row.get("paradigm") or row.get("method")
        for k in ("delta", "p", "p_holm"):
            metrics[f"claims/{where}/{row['a']}_vs_{row['b']}/{k}"] = row[k]
    if metrics:
        mlflow.log_metrics(metrics)
    if paper:
        mlflow.set_tags({f"claim.{c['id']}": c["status"] for c in paper})
    for f in files:
        mlflow.log_artifact(str(f), artifact_path="compare")
