"""Seeded kill -9 schedule (issue 13): kill points drawn over a tiny-profile `dvc repro` and a Prefect flow run.

    python -m tests.reliability.kill_schedule --state ~/gapo-kill-schedule --seed 13 --points 100
    python -m tests.reliability.kill_schedule --state ~/gapo-kill-schedule --summary

Point i runs the pipeline of mode `dvc` (i even: `dvc repro`) or `flow` (i odd: the Prefect flow, ephemeral API) in
a fresh copy of one template workspace (the tiny profile made smaller, as the fixed kill sequence of
test_crash_resume.py runs it), SIGKILLs the whole process group at a drawn fraction of the way through the run,
reruns the same command to completion and checks:

- the rerun exits 0 and no process of the killed run survived the kill;
- no completed round is lost: every `round.json` present right after the kill is byte-identical at the end (a
  redone round would have a new `completed_at`);
- the final policy and reward weights equal, bit for bit, those of an uninterrupted run of the same mode;
- `dvc status` is clean, no temp file of an atomic write is left in the workspace, and every logged-model folder
  under `mlartifacts/models/` is used by a registry version (gapo.sweep removed the killed attempt's).

Where a kill lands is random, not chosen by pause points as in test_crash_resume.py: the fractions of each mode
are stratified (one per slot of 1/n of the run, in a seeded order), so the points cover the whole run — start-up,
every stage, the `dvc commit`s between them, registration — and each record says which process was running. If
the run ends before its kill time (the machine got faster than when the reference was timed), the point is run
again with the delay scaled to the duration just seen.

Resumable: every finished point is appended to `<state>/progress.jsonl` (fsynced); a restart skips the points
already there, kills what a killed earlier invocation left running, and reuses `<state>/template` and
`<state>/reference.json`, so every point of one schedule tests the same code. A failed point's workspace is kept
under `<state>/points/` for diagnosis; a passed one is deleted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gapo.io import content_hash
from gapo.sweep import TEMP_NAME
from tests.orchestration.fast_pipeline import FAST_PIPELINE
from tests.reliability import rel_helpers as H

MODES = ("dvc", "flow")
# The tiny pipeline of the fixed kill sequence, one torch thread per process (the box has 2 cores and is shared).
OVERRIDES = (*FAST_PIPELINE, "runtime.threads=1")
MAX_FRACTION = 0.95   # kill before the last 5 % of the reference run: after it the run may already be over
RUN_TIMEOUT_S = 3600
KEEP_FAILED = 5       # failed workspaces kept on disk (~200 MB each)


@dataclass(frozen=True)
class Point:
    index: int
    mode: str
    fraction: float


def schedule(seed: int, n: int) -> list[Point]:
    """n points alternating dvc / flow; within a mode, point k gets a uniform draw inside slot perm[k] of
    [0, MAX_FRACTION), perm a seeded permutation: the kills cover the whole run whatever n is. Point i depends
    only on (seed, n, i)."""
    out = []
    per_mode = {m: len(range(j, n, len(MODES))) for j, m in enumerate(MODES)}
    perms = {m: random.Random(f"{seed}:{m}:{per_mode[m]}").sample(range(per_mode[m]), per_mode[m]) for m in MODES}
    for i in range(n):
        mode = MODES[i % len(MODES)]
        slot = perms[mode][i // len(MODES)]
        u = random.Random(f"{seed}:{i}").random()
        out.append(Point(i, mode, (slot + u) / per_mode[mode] * MAX_FRACTION))
    return out


# -- workspaces and commands -------------------------------------------------------------------------------------
def _env(root: Path) -> dict[str, str]:
    # the flow's ephemeral Prefect API took more than its default 120 s to start on the loaded 2-core box
    return H.tracked_env(root, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                         PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600", **H.SECRETS)


def _command(mode: str) -> list[str]:
    return [H.venv_bin("dvc"), "repro"] if mode == "dvc" else [sys.executable, "flows/gapo_pipeline.py"]


def make_template(state: Path) -> Path:
    """The repo copy every point starts from (built once per state dir: it freezes the code under test)."""
    template = state / "template"
    if (template / ".ready").is_file():
        return template
    shutil.rmtree(template, ignore_errors=True)
    H.make_repo_copy(template, "tiny", OVERRIDES)
    (template / ".ready").write_text("")
    return template


def fresh_workspace(template: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, dest, symlinks=True, ignore=shutil.ignore_patterns(".ready"))
    # the template's private DVC remote is an absolute path: point the copy at its own
    subprocess.run([H.venv_bin("dvc"), "remote", "modify", "--local", "local", "url", str(dest / ".dvc-remote")],
                   cwd=dest, check=True, capture_output=True)
    return dest


def final_weights(root: Path) -> dict[str, str | None]:
    out = {}
    for sub in ("policy", "reward"):
        f = root / "checkpoints" / "final" / sub / "model.safetensors"
        out[sub] = content_hash(f) if f.is_file() else None
    return out


def complete_rounds(root: Path) -> dict[str, str]:
    rounds = root / "checkpoints" / "rounds"
    return {p.parent.name: p.read_text() for p in sorted(rounds.glob("round_*/round.json"))} if rounds.is_dir() else {}


def run_to_end(cmd: list[str], root: Path, log: Path) -> tuple[int, float]:
    t0 = time.time()
    proc = H.start(cmd, root, _env(root), log)
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        H.kill9(proc)
        rc = -9
    return rc, round(time.time() - t0, 1)


# -- references --------------------------------------------------------------------------------------------------
def make_reference(state: Path, template: Path) -> dict:
    """One uninterrupted run per mode: its duration (the kill times scale with it) and its final weights."""
    path = state / "reference.json"
    ref: dict = json.loads(path.read_text()) if path.is_file() else {}
    for mode in MODES:
        if mode in ref:  # each mode is saved as soon as it is done: a failure of the other one keeps it
            continue
        root = fresh_workspace(template, state / "reference" / mode)
        rc, seconds = run_to_end(_command(mode), root, state / "reference" / f"{mode}.log")
        if rc != 0:
            raise SystemExit(f"kill_schedule: the uninterrupted {mode} run failed (exit {rc}); see "
                             f"{state / 'reference' / f'{mode}.log'}")
        ref[mode] = {"seconds": seconds, "weights": final_weights(root), "rounds": sorted(complete_rounds(root))}
        shutil.rmtree(root)
        path.write_text(json.dumps(ref, indent=2))
    ref["modes_agree"] = ref["dvc"]["weights"] == ref["flow"]["weights"]
    path.write_text(json.dumps(ref, indent=2))
    return ref


def _retime(state: Path, reference: dict, mode: str, seconds: float) -> None:
    reference[mode]["seconds"] = seconds
    (state / "reference.json").write_text(json.dumps(reference, indent=2))


# -- one point ---------------------------------------------------------------------------------------------------
def landed(root: Path, mode: str) -> str:
    """What was running in the workspace when the kill came: the gapo stage, else a dvc subcommand, else the
    orchestrator alone (start-up, between stages, bookkeeping)."""
    cmds = [cmd.split() for _, cmd in H.procs_in(root)]
    for argv in cmds:
        names = [Path(a).name for a in argv[:3]]
        if "gapo" in names:
            i = names.index("gapo")
            return " ".join(["gapo", *[a for a in argv[i + 1:] if not a.startswith("/")]])
    for argv in cmds:
        names = [Path(a).name for a in argv[:3]]
        if "dvc" in names:
            sub = argv[names.index("dvc") + 1:names.index("dvc") + 2]
            if sub and sub[0] != "repro":
                return f"dvc {sub[0]}"
    return "dvc repro (no stage running)" if mode == "dvc" else "flow (no stage running)"


def _locked_stages(root: Path) -> list[str]:
    import yaml

    lock = root / "dvc.lock"
    return sorted((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else []


def attempt_kill(point: Point, root: Path, delay: float, log: Path) -> dict:
    """Start the pipeline, SIGKILL its process group after `delay` seconds. Returns what the kill left."""
    t0 = time.time()
    proc = H.start(_command(point.mode), root, _env(root), log)
    while time.time() - t0 < delay:
        if proc.poll() is not None:
            return {"killed": False, "ran_s": round(time.time() - t0, 1), "exit": proc.returncode}
        time.sleep(0.05)
    where = landed(root, point.mode)
    H.kill9(proc)
    survivors = ""
    try:
        H.assert_no_survivors(root)
    except AssertionError as exc:
        survivors = str(exc)
        for pid, _ in H.procs_in(root):  # do not let them race the rerun
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return {"killed": True, "kill_s": round(time.time() - t0, 1), "landed": where, "survivors": survivors,
            "locked_at_kill": _locked_stages(root), "rounds_at_kill": complete_rounds(root)}


def orphan_model_folders(root: Path) -> list[str]:
    """Logged-model folders under mlartifacts/models/ that no registry version uses."""
    import mlflow

    folders = root / "mlartifacts" / "models"
    if not folders.is_dir():
        return []
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    used = {mv.source.removeprefix("models:/") for mv in client.search_model_versions()}
    return sorted(p.name for p in folders.iterdir() if p.name not in used)


def temp_leftovers(root: Path) -> list[str]:
    skip = {".git", ".dvc", ".venv", "mlartifacts", ".prefect-home", ".gapo", "tests"}
    out = []
    for base, dirs, files in os.walk(root):
        if Path(base) == root:
            dirs[:] = [d for d in dirs if d not in skip]
        out += [str(Path(base, n).relative_to(root)) for n in dirs + files if TEMP_NAME.match(n)]
    return sorted(out)


def check_after_rerun(point: Point, root: Path, kill: dict, reference: dict) -> dict:
    lost = [r for r, text in kill.get("rounds_at_kill", {}).items()
            if complete_rounds(root).get(r) != text]
    status = subprocess.run([H.venv_bin("dvc"), "status", "--json"], cwd=root, capture_output=True, text=True,
                            env=_env(root))
    checks = {
        "no_survivors": not kill.get("survivors"),
        "rounds_kept": not lost,
        "weights_equal": final_weights(root) == reference[point.mode]["weights"],
        "dvc_status_clean": status.returncode == 0 and json.loads(status.stdout or "{}") == {},
        "no_temp_leftovers": not temp_leftovers(root),
        "no_orphan_models": not orphan_model_folders(root),
    }
    detail = {"lost_rounds": lost, "temp_leftovers": temp_leftovers(root)[:5],
              "orphan_models": orphan_model_folders(root)[:5], "weights": final_weights(root)}
    return {"checks": checks, "detail": detail}


def run_point(point: Point, state: Path, template: Path, reference: dict) -> dict:
    root = state / "points" / f"{point.index:03d}" / "repo"
    log = root.parent / "run.log"
    record: dict = {**asdict(point), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "run_s_scale": reference[point.mode]["seconds"]}
    delay = point.fraction * reference[point.mode]["seconds"]
    for attempt in (1, 2):
        fresh_workspace(template, root)
        kill = attempt_kill(point, root, delay, log)
        if kill["killed"] or kill["exit"] != 0:
            break
        # finished before the kill: the machine is faster than when the run was timed (the load of other jobs
        # changes it several-fold); this run's duration becomes the mode's time scale, for this point and the next
        record[f"attempt{attempt}"] = kill
        _retime(state, reference, point.mode, kill["ran_s"])
        delay = point.fraction * kill["ran_s"]
    record.update({"delay_s": round(delay, 1), **{k: v for k, v in kill.items() if k != "rounds_at_kill"},
                   "rounds_at_kill": sorted(kill.get("rounds_at_kill", {}))})
    if kill["killed"]:
        rc, seconds = run_to_end(_command(point.mode), root, log)
        record.update({"rerun_exit": rc, "rerun_s": seconds})
        record.update(check_after_rerun(point, root, kill, reference) if rc == 0 else {"checks": {"rerun_ok": False}})
        if rc == 0:
            record["checks"]["rerun_ok"] = True
        record["ok"] = all(record["checks"].values())
    else:
        record["ok"] = False
    if record["ok"]:
        shutil.rmtree(root.parent, ignore_errors=True)
    else:
        record["kept"] = str(root.parent)
    return record


# -- the schedule ------------------------------------------------------------------------------------------------
def read_progress(path: Path) -> dict[int, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut by a kill of this script
                rec = json.loads(line)
                done[int(rec["index"])] = rec
    return done


def append_progress(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _kill_leftover_runs(state: Path) -> None:
    """A killed invocation of this script leaves its pipeline running (own process group): stop it first."""
    for pid, _ in H.procs_in(state / "points"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _prune_kept(state: Path, records: dict[int, dict]) -> None:
    kept = sorted(r["kept"] for r in records.values() if r.get("kept") and Path(r["kept"]).exists())
    for path in kept[:-KEEP_FAILED] if len(kept) > KEEP_FAILED else []:
        shutil.rmtree(path, ignore_errors=True)


def _check_header(state: Path, seed: int, n: int) -> None:
    header = state / "schedule.json"
    want = {"seed": seed, "points": n, "overrides": list(OVERRIDES)}
    if header.is_file():
        have = json.loads(header.read_text())
        if have != want:
            raise SystemExit(f"kill_schedule: {state} holds the schedule {have}; use another --state for {want}")
    else:
        header.write_text(json.dumps(want, indent=2))


def run_schedule(seed: int, points: int, state: Path, only: list[int] | None = None,
                 max_hours: float | None = None, out=sys.stdout) -> list[dict]:
    """Run the points of the schedule not in the progress file yet; returns every record of the schedule."""
    state.mkdir(parents=True, exist_ok=True)
    _check_header(state, seed, points)
    progress = state / "progress.jsonl"
    _kill_leftover_runs(state)
    template = make_template(state)
    reference = make_reference(state, template)
    done = read_progress(progress)
    t0 = time.time()
    for point in schedule(seed, points):
        if point.index in done or (only is not None and point.index not in only):
            continue
        if max_hours is not None and time.time() - t0 > max_hours * 3600:
            print(f"kill_schedule: --max-hours {max_hours} reached; rerun to continue", file=out, flush=True)
            break
        record = run_point(point, state, template, reference)
        append_progress(progress, record)
        done[point.index] = record
        _prune_kept(state, done)
        print(one_line(record), file=out, flush=True)
    return [done[i] for i in sorted(done)]


def one_line(r: dict) -> str:
    failed = [k for k, v in r.get("checks", {}).items() if not v]
    return (f"point {r['index']:3d} {r['mode']:4s} at {r['fraction']:.3f} -> {r.get('landed', 'not killed')}: "
            f"{'ok' if r['ok'] else 'FAILED ' + ','.join(failed)} (rerun {r.get('rerun_s', '-')} s)")


def summarize(records: list[dict], points: int) -> dict:
    where: dict[str, int] = {}
    for r in records:
        if r.get("killed"):
            key = r["landed"].split(" --")[0] if r["landed"].startswith("gapo") else r["landed"]
            where[key] = where.get(key, 0) + 1
    return {"points_planned": points, "points_run": len(records), "killed": sum(bool(r.get("killed")) for r in records),
            "passed": sum(bool(r.get("ok")) for r in records),
            "failed": [r["index"] for r in records if not r.get("ok")],
            "by_mode": {m: sum(r["mode"] == m for r in records) for m in MODES},
            "landed": dict(sorted(where.items(), key=lambda kv: -kv[1])),
            "rerun_s_median": _median([r["rerun_s"] for r in records if "rerun_s" in r])}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", required=True, type=Path, help="folder for the template, reference and progress")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--only", default=None, help="comma-separated point indices")
    ap.add_argument("--max-hours", type=float, default=None, help="start no new point after this long")
    ap.add_argument("--summary", action="store_true", help="print the summary of the progress file and exit")
    ns = ap.parse_args(argv)
    if ns.summary:
        records = list(read_progress(ns.state / "progress.jsonl").values())
        print(json.dumps(summarize(records, ns.points), indent=2))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run finally/atexit: the point's group is killed below
    only = [int(x) for x in ns.only.split(",")] if ns.only else None
    try:
        records = run_schedule(ns.seed, ns.points, ns.state, only, ns.max_hours)
    finally:
        _kill_leftover_runs(ns.state)
    summary = summarize(records, ns.points)
    print(json.dumps(summary, indent=2))
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
