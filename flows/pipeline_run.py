"""What one run of the `gapo-pipeline` flow (flows/gapo_pipeline.py) records about itself: its MLflow parent run
(stage and round runs nest under it), its progress bar, the result of each step, and at the end the summary
artifacts. The end is a Prefect state hook, `close_pipeline_run`, so the flow function holds only the schedule of
stages: whichever way the run ends (completed, failed, crashed, cancelled), the parent run is closed FINISHED
(completed) or FAILED (anything else) and the `gapo-rounds` table and `gapo-summary` markdown are published.

A hook gets the flow run, not the flow's locals, so a run in progress is kept here by flow-run id. A hook that
Prefect runs in another process (a worker's runner handles the cancellation or crash of its flow-run process)
finds nothing to close; the flow-run process closes what it still holds when it exits, as FAILED.
"""
from __future__ import annotations

import atexit
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.artifacts import Artifact
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import State


@dataclass
class PipelineRun:
    root: Path
    flow_run_id: str
    flow_run_name: str
    steps: int                                      # progress bar denominator: stages and rounds
    parent: dict[str, str] | None = None            # the MLflow parent run: run_id, experiment_id, tracking_uri, url
    results: list[dict[str, Any]] = field(default_factory=list)
    progress_id: Any = None
    done: int = 0

    @classmethod
    def begin(cls, root: Path, steps: int) -> PipelineRun:
        """Called in the flow once params.yaml is final: opens the progress bar and the MLflow parent run, and
        leaves the run for the state hook to close."""
        from prefect.artifacts import create_link_artifact, create_progress_artifact
        from prefect.runtime import deployment, flow_run

        run = cls(root, str(flow_run.id or "local"), str(flow_run.name or "local"), steps)
        run.progress_id = create_progress_artifact(progress=0.0, key="gapo-progress",
                                                   description="GAPO pipeline progress (stages and rounds)")
        try:
            run.parent = open_parent_run(root, run.flow_run_id, run.flow_run_name, deployment.name)
            create_link_artifact(key="gapo-mlflow-run", link=run.parent["url"], link_text="MLflow pipeline run",
                                 description=f"MLflow parent run {run.parent['run_id']} "
                                             f"({run.parent['tracking_uri']})")
        except Exception as exc:  # noqa: BLE001 - observability must not stop training
            _warn(f"MLflow parent run not created ({exc}); stages will track under their own parent")
        _OPEN[run.flow_run_id] = run
        return run

    def stage_env(self) -> dict[str, str]:
        """What each `gapo <stage>` needs to tag its MLflow run with this flow run and nest under its parent."""
        from prefect.runtime import flow_run

        env = {"GAPO_PREFECT_FLOW_RUN_ID": self.flow_run_id, "GAPO_PREFECT_FLOW_RUN_NAME": self.flow_run_name}
        url = getattr(flow_run, "ui_url", None)
        if url:
            env["GAPO_PREFECT_FLOW_RUN_URL"] = str(url)
        if self.parent:
            env["GAPO_MLFLOW_PARENT_RUN_ID"] = self.parent["run_id"]
        return env

    def record(self, result: dict[str, Any], steps: int = 1) -> None:
        """A step's result (a task's small dict); `steps`: how far it moves the progress bar (a skipped
        adversarial stage covers all its rounds, the commit after the rounds none)."""
        from prefect.artifacts import update_progress_artifact

        self.results.append(result)
        self.done += steps
        if steps:
            update_progress_artifact(self.progress_id, progress=min(100.0, 100.0 * self.done / self.steps))

    def outcome(self) -> dict[str, Any]:
        """The flow's return value."""
        out: dict[str, Any] = {"results": self.results,
                               "mlflow_parent_run_id": self.parent["run_id"] if self.parent else None}
        reg = self.root / "metrics" / "register.json"
        if reg.exists():
            out["register"] = json.loads(reg.read_text())
        return out


_OPEN: dict[str, PipelineRun] = {}


def close_pipeline_run(flow: Flow, flow_run: FlowRun, state: State) -> None:  # noqa: ARG001 (hook signature)
    """The flow's on_completion / on_failure / on_crashed / on_cancellation hook."""
    run = _OPEN.pop(str(flow_run.id), None)
    if run is not None:
        _finish(run, None if state.is_completed() else _error_of(state))


@atexit.register
def _close_left_open() -> None:
    """A worker's runner cancels a flow run by signalling its process and runs the cancellation hooks itself, in
    its own process: the flow-run process then exits without a hook, and closes its run here."""
    for flow_run_id in list(_OPEN):
        _finish(_OPEN.pop(flow_run_id), "the flow run ended before its state hook ran (cancelled by its runner?)")


def _error_of(state: State) -> str:
    """The exception that ended the run, as the summary quotes it (for a Crashed or Cancelled state without one,
    Prefect makes a CrashedRun / CancelledRun of the state's message); the message if even that fails."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a result that cannot be read back: the message says enough
        exc = None
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return state.message or state.name


def _finish(run: PipelineRun, error: str | None) -> None:
    """Each part on its own: a failure to publish one must not keep the MLflow run open, nor the reverse."""
    from prefect.artifacts import MarkdownArtifact, TableArtifact

    rows = read_round_rows(run.root)
    if rows:
        _publish(TableArtifact(key="gapo-rounds", table=rows, flow_run_id=run.flow_run_id,
                               description="GAPO adversarial rounds so far (plots/adversarial.csv)"))
    if run.parent:
        try:
            close_parent_run(run.root, run.parent["run_id"], error is None)
        except Exception as exc:  # noqa: BLE001
            _warn(f"MLflow parent run not closed: {exc}")
    _publish(MarkdownArtifact(key="gapo-summary", flow_run_id=run.flow_run_id, description="GAPO pipeline summary",
                              markdown=summary_markdown(run.flow_run_name, run.results, rows, run.parent, run.root,
                                                        error)))


def _publish(artifact: Artifact) -> None:
    # explicit flow_run_id: a crash hook and the exit handler run outside the flow run's context, where Prefect
    # would otherwise store the artifact unattached (and warn that this is deprecated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            artifact.create()
    except Exception as exc:  # noqa: BLE001
        _warn(f"Prefect artifact {artifact.key} not published: {exc}")


def _warn(msg: str) -> None:
    """To the flow run's log (Prefect stores it) when there is one; a crash hook and the exit handler have none."""
    from prefect import get_run_logger

    from gapo.redaction import redact_text  # the messages quote MLflow exceptions, which quote the tracking URI

    try:
        get_run_logger().warning(redact_text(msg))
    except Exception:  # noqa: BLE001 - outside a run context
        print(redact_text(f"gapo-pipeline: warning: {msg}"), file=sys.stderr)


# -- MLflow --------------------------------------------------------------------------------------------------------
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
    backfill_lineage(root, run_id)
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def backfill_lineage(root: Path, parent: str | None) -> None:
    """Tag the runs under `parent` with the dvc.lock hashes of what they wrote (known only after `dvc commit`)."""
    if not parent:
        return
    try:
        import mlflow

        from gapo.tracking.lineage import backfill_self_hashes

        backfill_self_hashes(mlflow.MlflowClient(), parent, root)
    except Exception as exc:  # noqa: BLE001
        from gapo.redaction import redact_text

        print(redact_text(f"gapo.tracking: warning: lineage backfill failed: {exc}"), file=sys.stderr)


# -- the summary ---------------------------------------------------------------------------------------------------
def read_round_rows(root: Path) -> list[dict[str, Any]]:
    import csv

    path = root / "plots" / "adversarial.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def summary_markdown(flow_run_name: str, results: list[dict], rounds: list[dict], parent: dict | None,
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
