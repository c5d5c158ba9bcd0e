"""The `gapo-pipeline` Prefect flow: Prefect owns *when, where and retry*; DVC owns *what*; MLflow observes.

Reads like the pipeline's diagram: prepare -> models -> sft -> rm_warmup -> round 1..R -> evaluate -> register.
Every task is the same `gapo <stage>` command dvc.yaml runs (a subprocess: isolation, a clean kill on timeout),
wrapped the same way:
1. `dvc status <stage>`: up to date -> skipped, nothing is retrained (a run right after `dvc repro` is a no-op);
2. else run `gapo <stage>` (adversarial: one task per round, `gapo adversarial --round k`, each an RM step then a
   PO step; round R also writes checkpoints/final), then `dvc commit -f <stage>`, so the flow leaves the same DVC-tracked
   outputs and dvc.lock as `dvc repro` would.
Tasks are cached on content: the cache key of an up-to-date stage is the md5 of its dvc.lock entry (DVC's hashes
of its deps, params and outs), so Prefect shows it as Cached; a stage that is not up to date has no key and runs.
Transient failures (a crash, OOM kill, lock contention) are retried with exponential backoff; a config or data
error (`gapo` exit code 2) or a timeout is not.

Parameters override params.yaml (`overrides=["ppo.init_kl_coef=0.05"]`, the syntax of `dvc exp run -S`, and
`profile="tiny"`): they are written into params.yaml first, as `dvc exp run -S` does, so dvc.lock records them.

Each run opens one MLflow parent run (stage and round runs nest under it) and publishes Prefect artifacts: a
table per round, a progress bar, and a markdown summary linking the MLflow run and the registered versions. The
run's end (parent run closed, summary published) is a state hook, flows/pipeline_run.py; running a command and
killing it: flows/supervision.py.

    python flows/gapo_pipeline.py --profile tiny -S adversarial.rounds=2      # run here (ephemeral Prefect)
    prefect deployment run 'gapo-pipeline/local' --param profile=tiny       # via a deployment (docs/running.md)
"""
from __future__ import annotations

import os

# Ephemeral mode starts a temporary API server; its 20 s default start-up timeout fails on a loaded machine, and so
# did 120 s (a niced flow on the 2-core box at load ~5, the kill schedule's reference run). The timeout only bounds
# the wait for a server that never comes up, so a long one costs nothing when it does.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import gapo  # noqa: E402,F401  (offline / no-telemetry environment)
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from flows.pipeline_run import PipelineRun, backfill_lineage, close_pipeline_run, read_round_rows  # noqa: E402
from flows.supervision import StageFailed, dvc_exe, gapo_exe, run_logged  # noqa: E402
from gapo.stages import PIPELINE, ROUNDS_STAGE  # noqa: E402

# the stages around the adversarial rounds (which run as one task per round)
PRE_ROUND_STAGES = PIPELINE[:PIPELINE.index(ROUNDS_STAGE)]
POST_ROUND_STAGES = PIPELINE[PIPELINE.index(ROUNDS_STAGE) + 1:]


# -- plain helpers (no Prefect state; unit-tested; running the stages: flows/supervision.py) -----------------------
def dvc_status(root: Path, stage: str) -> dict:
    """`dvc status <stage> --json` (this stage only): {} when up to date."""
    out = subprocess.run([dvc_exe(), "status", stage, "--json"], cwd=root, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise StageFailed(f"dvc status {stage}", out.returncode, out.stderr.strip()[-300:], transient=True)
    text = out.stdout.strip()
    return json.loads(text) if text else {}


def lock_hash(root: Path, stage: str) -> str | None:
    from gapo.tracking.lineage import entry_hash, read_lock

    entry = read_lock(root).get(stage)
    return entry_hash(entry) if entry else None


def dvc_cache_key(context, parameters: dict) -> Optional[str]:  # noqa: ARG001 (Prefect's cache_key_fn signature)
    """Cache key of a stage task: its dvc.lock entry hash when DVC says it is up to date, else None (no cache)."""
    root, stage = Path(parameters["root"]), parameters["stage"]
    if dvc_status(root, stage):
        return None
    h = lock_hash(root, stage)
    if h is None:
        return None
    return "gapo-" + hashlib.sha256(f"{root}|{stage}|{h}".encode()).hexdigest()


def retry_transient(task, task_run, state) -> bool:  # noqa: ARG001
    exc = state.data if isinstance(state.data, BaseException) else None
    return bool(getattr(exc, "transient", True))


def configure_params(root: Path, profile: str | None, overrides: list[str]) -> bool:
    """Write profile + overrides into params.yaml (rendered from the schema, like `gapo config --write`).
    A missing params.yaml is generated from the defaults. Returns whether the file changed."""
    from gapo.config import load_params, render_params_yaml
    from gapo.io import atomic_file

    path = root / "params.yaml"
    if path.exists() and not profile and not overrides:
        return False
    text = render_params_yaml(load_params(path if path.exists() else None, list(overrides), profile))
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    with atomic_file(path) as fh:
        fh.write(text)
    return True


# -- tasks ---------------------------------------------------------------------------------------------------------
TASK_RETRIES = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=20), retry_jitter_factor=0.3,
                    retry_condition_fn=retry_transient)


@task(name="configure", retries=0, cache_policy=NO_CACHE)
def configure(root: str, profile: Optional[str], overrides: list[str]) -> dict:
    changed = configure_params(Path(root), profile, overrides)
    from gapo.config import load_params

    params = load_params(Path(root) / "params.yaml")
    return {"params_changed": changed, "rounds": params.adversarial.rounds, "method": params.method}


def step_result(root: Path, stage: str, status: str, t0: float | None) -> dict:
    """What a stage step returns (and the summary lists): small, so Prefect can persist it as the cached result."""
    return {"stage": stage, "status": status, "seconds": 0.0 if t0 is None else round(time.time() - t0, 1),
            "lock": lock_hash(root, stage)}


@task(name="stage", cache_key_fn=dvc_cache_key, persist_result=True, **TASK_RETRIES)
def run_stage(stage: str, root: str, env: dict[str, str], timeout_s: float) -> dict:
    """One DVC stage: skip if up to date, else `gapo <stage>` + `dvc commit -f <stage>`."""
    log, rootp, t0 = get_run_logger(), Path(root), time.time()
    if not dvc_status(rootp, stage):
        log.info(f"{stage}: up to date (dvc status), skipped")
        return step_result(rootp, stage, "skipped", None)
    run_logged([gapo_exe(), stage], rootp, env, timeout_s, f"gapo {stage}", log)
    commit(rootp, stage, env, log)
    return step_result(rootp, stage, "ran", t0)


@task(name="round", cache_policy=NO_CACHE, **TASK_RETRIES)
def run_round(k: int, root: str, env: dict[str, str], timeout_s: float) -> dict:
    """Adversarial round k: RM step on fresh policy samples, then the PO (PPO) step; resumes a partial round."""
    log, rootp, t0 = get_run_logger(), Path(root), time.time()
    run_logged([gapo_exe(), ROUNDS_STAGE, "--round", str(k)], rootp, env, timeout_s,
               f"gapo {ROUNDS_STAGE} --round {k}", log)
    rows = [r for r in read_round_rows(rootp) if str(r.get("round")) == str(k)]
    if rows:
        create_table_artifact(key=f"gapo-round-{k:03d}", table=rows,
                              description=f"GAPO adversarial round {k}: RM and policy health (plots/adversarial.csv)")
    return {"round": k, "seconds": round(time.time() - t0, 1), "row": rows[-1] if rows else {}}


@task(name="adversarial-commit", cache_policy=NO_CACHE, **TASK_RETRIES)
def finalize_adversarial(root: str, env: dict[str, str], timeout_s: float, run_stage_cmd: bool) -> dict:
    """After the rounds (`--round R` already wrote checkpoints/final and the metrics): `dvc commit`. With
    adversarial.rounds = 0 there is no round task, so the stage command itself writes final (the SFT policy)."""
    log, rootp, t0 = get_run_logger(), Path(root), time.time()
    if run_stage_cmd:
        run_logged([gapo_exe(), ROUNDS_STAGE], rootp, env, timeout_s, f"gapo {ROUNDS_STAGE}", log)
    commit(rootp, ROUNDS_STAGE, env, log)
    return step_result(rootp, ROUNDS_STAGE, "ran", t0)


@task(name="dvc", cache_policy=NO_CACHE, **TASK_RETRIES)
def dvc_transfer(root: str, verb: str, timeout_s: float) -> None:
    """`dvc pull` (outputs a previous run pushed; a first run finds none: --allow-missing) or `dvc push`."""
    cmd = [dvc_exe(), verb] + (["--allow-missing"] if verb == "pull" else [])
    run_logged(cmd, Path(root), None, timeout_s, f"dvc {verb}", get_run_logger())


def commit(root: Path, stage: str, env: dict[str, str], log) -> None:
    """Record the stage in dvc.lock and the cache, as `dvc repro` does, then tag its MLflow run with it."""
    run_logged([dvc_exe(), "commit", "-f", stage], root, None, 1800, f"dvc commit {stage}", log)
    backfill_lineage(root, env.get("GAPO_MLFLOW_PARENT_RUN_ID"))


# -- the flow --------------------------------------------------------------------------------------------------------
@flow(name="gapo-pipeline", log_prints=True, on_completion=[close_pipeline_run], on_failure=[close_pipeline_run],
      on_crashed=[close_pipeline_run], on_cancellation=[close_pipeline_run])
def gapo_pipeline(overrides: Optional[list[str]] = None, profile: Optional[str] = None, workdir: str = ".",
                  stage_timeout_s: int = 6 * 3600, dvc_pull: bool = False, dvc_push: bool = False) -> dict:
    """GAPO end to end. `overrides`: params.yaml keys as `key.path=value` (like `dvc exp run -S`); `profile`: a
    profiles/<name>.yaml merged first; `workdir`: the workspace (repository) root; `dvc_pull`/`dvc_push`: fetch
    inputs from / store outputs to the default DVC remote (containers, clusters). The MLflow parent run is closed
    and the summary published by the state hook (flows/pipeline_run.py), however the run ends."""
    from prefect.runtime import flow_run

    from gapo.io import workspace_lock

    root = Path(workdir).resolve()
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"workdir {root}: no dvc.yaml (point `workdir` at the gapo-pipeline checkout)")
    # One flow run per workspace, taken before params.yaml is written: a second run on the same workdir fails at once
    # instead of overwriting the first one's params and checkpoints (concurrent runs: separate workdirs,
    # docs/reliability.md). An OS lock: a killed run never leaves it behind.
    with workspace_lock(root, "pipeline", f"gapo-pipeline flow run {flow_run.name or 'local'}"):
        cfg = configure(str(root), profile, list(overrides or []))
        # Baselines (method != gapo) have no rounds: their `adversarial` stage runs whole, as with rounds = 0.
        rounds = int(cfg["rounds"]) if cfg.get("method", "gapo") == "gapo" else 0
        if dvc_pull:
            dvc_transfer(str(root), "pull", stage_timeout_s)
        run = PipelineRun.begin(root, steps=len(PRE_ROUND_STAGES) + max(rounds, 1) + len(POST_ROUND_STAGES))
        ws, env, limit = str(root), run.stage_env(), stage_timeout_s + 300

        for stage in PRE_ROUND_STAGES:
            run.record(run_stage.with_options(task_run_name=stage, timeout_seconds=limit)(
                stage, ws, env, stage_timeout_s))
        if not dvc_status(root, ROUNDS_STAGE):
            run.record(step_result(root, ROUNDS_STAGE, "skipped", None), steps=max(rounds, 1))
        else:
            for k in range(1, rounds + 1):
                run.record(run_round.with_options(task_run_name=f"round-{k}", timeout_seconds=limit)(
                    k, ws, env, stage_timeout_s))
            run.record(finalize_adversarial.with_options(timeout_seconds=limit)(ws, env, stage_timeout_s, rounds == 0),
                       steps=1 if rounds == 0 else 0)
        for stage in POST_ROUND_STAGES:
            run.record(run_stage.with_options(task_run_name=stage, timeout_seconds=limit)(
                stage, ws, env, stage_timeout_s))

        if dvc_push:
            dvc_transfer(ws, "push", stage_timeout_s)
    return run.outcome()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the gapo-pipeline flow here (ephemeral Prefect unless "
                                             "PREFECT_API_URL points at a server).")
    ap.add_argument("--profile", default=None)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--stage-timeout-s", type=int, default=6 * 3600)
    ns = ap.parse_args(argv)
    out = gapo_pipeline(overrides=ns.overrides, profile=ns.profile, workdir=ns.workdir,
                        stage_timeout_s=ns.stage_timeout_s)
    print(json.dumps(out, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
