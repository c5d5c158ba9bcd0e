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
table per round, a progress bar, and a markdown summary linking the MLflow run and the registered versions.

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
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import gapo  # noqa: E402,F401  (offline / no-telemetry environment)
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_link_artifact, create_markdown_artifact, create_progress_artifact, create_table_artifact,
    update_progress_artifact)
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

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


def read_round_rows(root: Path) -> list[dict[str, Any]]:
    import csv

    path = root / "plots" / "adversarial.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- tasks ---------------------------------------------------------------------------------------------------------
TASK_RETRIES = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=20), retry_jitter_factor=0.3,
                    retry_condition_fn=retry_transient)


@task(name="configure", retries=0, cache_policy=NO_CACHE)
def configure(root: str, profile: Optional[str], overrides: list[str]) -> dict:
    changed = configure_params(Path(root), profile, overrides)
    from gapo.config import load_params

    params = load_params(Path(root) / "params.yaml")
    return {"params_changed": changed, "rounds": params.adversarial.rounds, "method": params.method}


@task(name="stage", cache_key_fn=dvc_cache_key, persist_result=True, **TASK_RETRIES)
def run_stage(stage: str, root: str, env: dict[str, str], timeout_s: float) -> dict:
    """One DVC stage: skip if up to date, else `gapo <stage>` + `dvc commit -f <stage>`."""
    log, rootp, t0 = get_run_logger(), Path(root), time.time()
    if not dvc_status(rootp, stage):
        log.info(f"{stage}: up to date (dvc status), skipped")
        return {"stage": stage, "status": "skipped", "seconds": 0.0, "lock": lock_hash(rootp, stage)}
    run_logged([gapo_exe(), stage], rootp, env, timeout_s, f"gapo {stage}", log)
    commit(rootp, stage, env, log)
    return {"stage": stage, "status": "ran", "seconds": round(time.time() - t0, 1), "lock": lock_hash(rootp, stage)}


@task(name="round", cache_policy=NO_CACHE, **TASK_RETRIES)
def run_round(k: int, root: str, env: dict[str, str], timeout_s: float) -> dict:
    """Adversarial round k: RM step on fresh policy samples, then the PO (PPO) step; resumes a partial round."""
    log, rootp, t0 = get_run_logger(), Path(root), time.time()
    run_logged([gapo_exe(), "adversarial", "--round", str(k)], rootp, env, timeout_s, f"gapo adversarial --round {k}",
               log)
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
        run_logged([gapo_exe(), "adversarial"], rootp, env, timeout_s, "gapo adversarial", log)
    commit(rootp, "adversarial", env, log)
    return {"stage": "adversarial", "status": "ran", "seconds": round(time.time() - t0, 1),
            "lock": lock_hash(rootp, "adversarial")}


@task(name="dvc", cache_policy=NO_CACHE, **TASK_RETRIES)
def dvc_transfer(root: str, verb: str, timeout_s: float) -> None:
    """`dvc pull` (outputs a previous run pushed; a first run finds none: --allow-missing) or `dvc push`."""
    cmd = [dvc_exe(), verb] + (["--allow-missing"] if verb == "pull" else [])
    run_logged(cmd, Path(root), None, timeout_s, f"dvc {verb}", get_run_logger())


def commit(root: Path, stage: str, env: dict[str, str], log) -> None:
    """Record the stage in dvc.lock and the cache, as `dvc repro` does, then tag its MLflow run with it."""
    run_logged([dvc_exe(), "commit", "-f", stage], root, None, 1800, f"dvc commit {stage}", log)
    _backfill_mlflow(root, env.get("GAPO_MLFLOW_PARENT_RUN_ID"))


def _backfill_mlflow(root: Path, parent: str | None) -> None:
    if not parent:
        return
    try:
        import mlflow

        from gapo.tracking.lineage import backfill_self_hashes

        backfill_self_hashes(mlflow.MlflowClient(), parent, root)
    except Exception as exc:  # noqa: BLE001
        from gapo.redaction import redact_text

        print(redact_text(f"gapo.tracking: warning: lineage backfill failed: {exc}"), file=sys.stderr)


# -- MLflow parent run ---------------------------------------------------------------------------------------------
def open_parent_run(root: Path, flow_run_id: str, flow_run_name: str, deployment: str | None) -> dict[str, str]:
    import mlflow
    from mlflow.entities import Param

    from gapo.config import load_params
    from gapo.tracking import backend, lineage
    from gapo.tracking.runs import flat_params

    params = load_params(root / "params.yaml")
    exp_id = backend.configure(params, root)
    client = mlflow.MlflowClient()
    run = client.create_run(exp_id, run_name=f"gapo-pipeline {flow_run_name}", tags={
        "gapo.role": "pipeline", "gapo.trigger": "prefect", "gapo.pipeline_key": f"prefect:{flow_run_id}",
        "gapo.workspace": str(root), "prefect.flow_run_id": flow_run_id, "prefect.flow_run_name": flow_run_name,
        **({"prefect.deployment": deployment} if deployment else {}), **lineage.git_info(root)})
    items = list(flat_params(params).items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    uri = mlflow.get_tracking_uri()
    return {"run_id": run.info.run_id, "experiment_id": exp_id, "tracking_uri": backend.redact(uri),
            "url": backend.redact(backend.ui_url(uri, exp_id, run.info.run_id))}


def close_parent_run(root: Path, run_id: str, ok: bool) -> None:
    import mlflow

    from gapo.tracking.runs import numeric_metrics

    client = mlflow.MlflowClient()
    path = root / "metrics" / "evaluate.json"
    if ok and path.exists():
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {k: v for k, v in numeric_metrics(json.loads(path.read_text())).items() if "." not in k}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    _backfill_mlflow(root, run_id)
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


# -- the flow --------------------------------------------------------------------------------------------------------
def _summary_markdown(flow_run_name: str, results: list[dict], rounds: list[dict], parent: dict | None,
                      root: Path, error: str | None) -> str:
    lines = [f"# GAPO pipeline `{flow_run_name}`", "", f"Workspace `{root}`" + (f" - **FAILED**: {error}" if error
                                                                                 else ""), ""]
    lines += ["| step | status | seconds | dvc.lock md5 |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.get('stage') or 'round ' + str(r.get('round'))} | {r.get('status', 'ran')} | "
                     f"{r.get('seconds', '')} | `{(r.get('lock') or '')[:12]}` |")
    if rounds:
        cols = list(rounds[0].keys())
        lines += ["", "## Adversarial rounds (plots/adversarial.csv)", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rounds]
    ev = root / "metrics" / "evaluate.json"
    if ev.exists():
        data = json.loads(ev.read_text())
        keys = [k for k in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                            "inst_level_loose_acc", "kl_to_sft", "rm_accuracy", "rm_auc") if k in data]
        keys += [k for k in sorted(data) if k.startswith("rm_") and k not in keys and
                 isinstance(data[k], (int, float))]
        lines += ["", "## Held-out evaluation (metrics/evaluate.json)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {data[k]:.4g} |" if isinstance(data[k], float) else f"| {k} | {data[k]} |" for k in keys]
    reg = root / "metrics" / "register.json"
    if reg.exists():
        r = json.loads(reg.read_text())
        lines += ["", "## Registry", "",
                  f"- `{r['policy_name']}` **v{r['policy_version']}** and `{r['reward_model_name']}` "
                  f"**v{r['reward_model_version']}**: alias `candidate`",
                  f"- gate: **{'promoted to champion' if r['promoted'] else 'not promoted'}** - "
                  + "; ".join(r.get("gate_reasons", [])),
                  f"- current champion: v{r.get('champion_version')}",
                  f"- lineage: `gapo lineage models:/{r['policy_name']}/{r['policy_version']}`",
                  f"- serve: `mlflow models serve -m models:/{r['policy_name']}@champion --env-manager local`"]
    if parent:
        lines += ["", f"MLflow pipeline run: [{parent['run_id']}]({parent['url']}) (tracking `{parent['tracking_uri']}`)"]
    return "\n".join(lines) + "\n"


@flow(name="gapo-pipeline", log_prints=True)
def gapo_pipeline(overrides: Optional[list[str]] = None, profile: Optional[str] = None, workdir: str = ".",
                  stage_timeout_s: int = 6 * 3600, dvc_pull: bool = False, dvc_push: bool = False) -> dict:
    """GAPO end to end. `overrides`: params.yaml keys as `key.path=value` (like `dvc exp run -S`); `profile`: a
    profiles/<name>.yaml merged first; `workdir`: the workspace (repository) root; `dvc_pull`/`dvc_push`: fetch
    inputs from / store outputs to the default DVC remote (containers, clusters)."""
    from prefect.runtime import deployment as rt_deployment
    from prefect.runtime import flow_run as rt_flow_run

    log = get_run_logger()
    root = Path(workdir).resolve()
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"workdir {root}: no dvc.yaml (point `workdir` at the gapo-pipeline checkout)")
    # One flow run per workspace, taken before params.yaml is written: a second run on the same workdir fails at once
    # instead of overwriting the first one's params and checkpoints (concurrent runs: separate workdirs,
    # docs/reliability.md). An OS lock: a killed run never leaves it behind.
    from gapo.io import workspace_lock

    held = contextlib.ExitStack()
    held.enter_context(workspace_lock(root, "pipeline", f"gapo-pipeline flow run {rt_flow_run.name or 'local'}"))
    try:
        cfg = configure(str(root), profile, list(overrides or []))
    except BaseException:
        held.close()
        raise
    # Baselines (method != gapo) have no rounds: their `adversarial` stage runs whole, as with rounds = 0.
    rounds_n = int(cfg["rounds"]) if cfg.get("method", "gapo") == "gapo" else 0
    flow_run_id, flow_run_name = str(rt_flow_run.id or "local"), str(rt_flow_run.name or "local")
    progress_id = create_progress_artifact(progress=0.0, key="gapo-progress",
                                           description="GAPO pipeline progress (stages and rounds)")
    total = len(PRE_ROUND_STAGES) + max(rounds_n, 1) + len(POST_ROUND_STAGES)
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        update_progress_artifact(progress_id, progress=min(100.0, 100.0 * done / total))

    if dvc_pull:
        dvc_transfer(str(root), "pull", stage_timeout_s)
    parent = None
    try:
        parent = open_parent_run(root, flow_run_id, flow_run_name, rt_deployment.name)
        create_link_artifact(key="gapo-mlflow-run", link=parent["url"], link_text="MLflow pipeline run",
                             description=f"MLflow parent run {parent['run_id']} ({parent['tracking_uri']})")
    except Exception as exc:  # noqa: BLE001 - observability must not stop training
        from gapo.redaction import redact_text  # the exception quotes the tracking URI (Prefect stores this log)

        log.warning(redact_text(f"MLflow parent run not created ({exc}); stages will track under their own parent"))
    env = {"GAPO_PREFECT_FLOW_RUN_ID": flow_run_id, "GAPO_PREFECT_FLOW_RUN_NAME": flow_run_name}
    with_url = getattr(rt_flow_run, "ui_url", None)
    if with_url:
        env["GAPO_PREFECT_FLOW_RUN_URL"] = str(with_url)
    if parent:
        env["GAPO_MLFLOW_PARENT_RUN_ID"] = parent["run_id"]

    results: list[dict] = []
    error = None
    try:
        for stage in PRE_ROUND_STAGES:
            results.append(run_stage.with_options(task_run_name=stage, timeout_seconds=stage_timeout_s + 300)(
                stage, str(root), env, stage_timeout_s))
            advance()
        if not dvc_status(root, "adversarial"):
            results.append({"stage": "adversarial", "status": "skipped", "seconds": 0.0,
                            "lock": lock_hash(root, "adversarial")})
            done += max(rounds_n, 1) - 1
            advance()
        else:
            for k in range(1, rounds_n + 1):
                results.append(run_round.with_options(task_run_name=f"round-{k}", timeout_seconds=stage_timeout_s + 300)(
                    k, str(root), env, stage_timeout_s))
                advance()
            results.append(finalize_adversarial.with_options(timeout_seconds=stage_timeout_s + 300)(
                str(root), env, stage_timeout_s, rounds_n == 0))
            if rounds_n == 0:
                advance()
        for stage in POST_ROUND_STAGES:
            results.append(run_stage.with_options(task_run_name=stage, timeout_seconds=stage_timeout_s + 300)(
                stage, str(root), env, stage_timeout_s))
            advance()
        if dvc_push:
            dvc_transfer(str(root), "push", stage_timeout_s)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        held.close()
        rows = read_round_rows(root)
        if rows:
            create_table_artifact(key="gapo-rounds", table=rows,
                                  description="GAPO adversarial rounds so far (plots/adversarial.csv)")
        if parent:
            try:
                close_parent_run(root, parent["run_id"], error is None)
            except Exception as exc:  # noqa: BLE001
                from gapo.redaction import redact_text

                log.warning(redact_text(f"MLflow parent run not closed: {exc}"))
        create_markdown_artifact(key="gapo-summary", markdown=_summary_markdown(
            flow_run_name, results, rows, parent, root, error), description="GAPO pipeline summary")
    summary = {"results": results, "mlflow_parent_run_id": parent["run_id"] if parent else None}
    reg = root / "metrics" / "register.json"
    if reg.exists():
        summary["register"] = json.loads(reg.read_text())
    return summary


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
