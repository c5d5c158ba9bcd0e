"""One MLflow run per stage, nested under one parent run per pipeline run; training code stays MLflow-free.

`tracked(stage)` wraps a stage function `fn(params, ws, **cli_args)`. Around the call it:
1. finds the parent run: `GAPO_MLFLOW_PARENT_RUN_ID` (the Prefect flow created it and owns it), else the run
   tagged with this invocation's pipeline key (created on first use): under `dvc repro` / `dvc exp run` the key
   names the DVC process, so every stage of one repro shares one parent; `GAPO_PIPELINE_KEY` groups stages run
   by hand; a lone `gapo <stage>` gets a parent of its own;
2. opens a nested run `<stage>` (`<stage>-round-NNN` for `gapo adversarial --round N`) with system metrics,
   the flattened params and the lineage tags (gapo.tracking.lineage);
3. after the stage, logs what the stage wrote during this run: the metrics files and plot CSVs that dvc.yaml
   lists for it (rows become step metrics `<csv stem>/<column>`), and, for the adversarial stage, one nested
   run per round (`round-NNN`) holding that round's row of plots/adversarial.csv.
Tracking problems (server down, bad URI) are reported on stderr and never fail a stage; the stage's own
errors mark the run FAILED (and a parent this process owns) and propagate unchanged.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from gapo.config import Params
from gapo.paths import Workspace
from gapo.tracking import backend, lineage

ROUND_PLOTS = "plots/adversarial.csv"
_METRIC_KEY_BAD = re.compile(r"[^/\w.\- ]")


def _warn(msg: str) -> None:
    from gapo.redaction import redact_text

    # MLflow quotes the URI it failed to reach ("API request to http://user:pw@host/... failed")
    print(f"gapo.tracking: warning: {redact_text(msg)}", file=sys.stderr, flush=True)


# -- small pure helpers (unit-tested) ---------------------------------------------------------------------------
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists and tuples stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    elif prefix:
        out[prefix] = tree
    return out


def flat_params(params: Params) -> dict[str, str]:
    """Every param as an MLflow param value; a URI's user:password@ is removed (`-S tracking.tracking_uri=...`)."""
    from gapo.redaction import redact_text

    return {k: redact_text(json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in flatten(params.model_dump(mode="json")).items()}


def _safe_tags(tags: dict[str, Any]) -> dict[str, str]:
    from gapo.redaction import redact_text

    return {k: redact_text(str(v)) for k, v in tags.items()}


def metric_key(name: str) -> str:
    return _METRIC_KEY_BAD.sub("_", name)


def numeric_metrics(tree: Any) -> dict[str, float]:
    """The finite-or-not numbers (bools as 0/1) of a metrics JSON, flattened, keys made MLflow-safe."""
    out = {}
    for key, value in flatten(tree).items():
        if isinstance(value, bool):
            out[metric_key(key)] = float(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[metric_key(key)] = float(value)
    return out


def read_curve(path: Path) -> tuple[str | None, list[dict[str, float]]]:
    """A plots CSV -> (step column, rows of numbers). The step column is `step`, `round` or `epoch`."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        step_col = next((c for c in ("step", "round", "epoch") if c in fields), None)
        rows = []
        for raw in reader:
            row = {}
            for key, text in raw.items():
                if key is None or text is None or text == "":
                    continue
                try:
                    row[key] = float(text)
                except ValueError:
                    continue
            rows.append(row)
    return step_col, rows


def stage_files(root: Path, stage: str) -> tuple[list[str], list[str]]:
    """(metrics JSON files, plot files: CSV curves and figures) that dvc.yaml declares for `stage`;
    `metrics/<stage>.json` and no plots when dvc.yaml does not list the stage."""
    import yaml

    metrics, plots = [f"metrics/{stage}.json"], []
    path = root / "dvc.yaml"
    if path.exists():
        spec = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage)
        if spec:
            def names(items):
                return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items or []]
            metrics = [m for m in names(spec.get("metrics")) if m.endswith(".json")] or metrics
            plots = names(spec.get("plots"))
    return metrics, plots


def _find_dvc_process() -> tuple[int, float] | None:
    try:
        import psutil

        for proc in psutil.Process().parents():
            try:
                argv = proc.cmdline()
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                continue
            head = [Path(a).name for a in argv[:3]]
            if "dvc" in head and any(a in ("repro", "exp", "run", "queue") for a in argv[1:4]):
                return proc.pid, proc.create_time()
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: fall back below
        return None
    return None


def pipeline_key() -> tuple[str, str]:
    """(key, trigger): what groups this stage's run with the other stages of the same pipeline run."""
    host = socket.gethostname()
    if os.environ.get(backend.ENV_PIPELINE_KEY):
        return os.environ[backend.ENV_PIPELINE_KEY], "manual"
    if os.environ.get("DVC_STAGE"):
        found = _find_dvc_process()
        if found is not None:
            pid, created = found
            # DVC_ROOT: a queue worker runs several experiments, each in its own temp workspace
            return f"dvc:{host}:{pid}:{created:.2f}:{os.environ.get('DVC_ROOT', '')}", "dvc"
    return f"cli:{host}:{os.getpid()}:{time.time():.3f}", "cli"


# -- runs of killed attempts ---------------------------------------------------------------------------------------
def _process_tags() -> dict[str, str]:
    """Who runs this stage: host, pid and the process's start time (a pid alone may be reused)."""
    try:
        import psutil

        started = f"{psutil.Process().create_time():.2f}"
    except Exception:  # noqa: BLE001
        started = ""
    return {"gapo.host": socket.gethostname(), "gapo.pid": str(os.getpid()), "gapo.pid_started": started}


def _alive(pid: int, started: str) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.is_running() and (not started or abs(proc.create_time() - float(started)) < 1.0)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that opened a RUNNING run still lives: True / False, None when we cannot tell (another
    host, a run of the Prefect flow or of an older version without the process tags)."""
    host = socket.gethostname()
    if tags.get("gapo.pid"):
        if tags.get("gapo.host") != host:
            return None
        return _alive(int(tags["gapo.pid"]), tags.get("gapo.pid_started", ""))
    key = tags.get("gapo.pipeline_key", "")
    parts = key.split(":")
    if parts[0] in ("dvc", "cli") and len(parts) >= 4 and parts[1] == host and parts[2].isdigit():
        # dvc:<host>:<pid of dvc>:<its start time>:...; cli:<host>:<pid>:<time>
        return _alive(int(parts[2]), parts[3] if parts[0] == "dvc" else "")
    return None


def mark_killed_runs(client, exp_id: str, root: Path) -> list[str]:
    """Close as KILLED the runs of this workspace left RUNNING by a process that no longer exists (kill -9 leaves them
    so: nothing in the process runs to close them). Called when a stage starts, so a rerun after a kill tidies up
    the killed attempt. Returns the run ids closed."""
    ws = str(root)
    if "'" in ws or "`" in ws:
        return []
    closed = []
    runs = client.search_runs([exp_id], filter_string=f"attributes.status = 'RUNNING' and tags.`gapo.workspace` = "
                                                      f"'{ws}'", max_results=500)
    for run in runs:
        if _owner_alive(run.data.tags) is False:
            client.set_tag(run.info.run_id, "gapo.closed_by", f"a later run in this workspace (pid {os.getpid()}): "
                                                             "the process that opened it was gone")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


# -- the wrapper ---------------------------------------------------------------------------------------------------
def quiet_mlflow_logs() -> None:
    """MLflow's INFO lines (system-metrics monitor, DB migrations) would drown a stage's own output."""
    import logging

    import mlflow  # noqa: F401  (its import configures the "mlflow" logger; override after)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _StageTracker:
    def __init__(self, stage: str, params: Params, ws: Workspace, cli_args: dict):
        quiet_mlflow_logs()
        import mlflow

        self.mlflow = mlflow
        self.stage, self.params, self.ws, self.cli_args = stage, params, ws, cli_args
        self.round = cli_args.get("round") if stage == "adversarial" else None
        self.started = time.time()
        self.exp_id = backend.configure(params, ws.root)
        self.client = mlflow.MlflowClient()
        self.owns_parent = False
        with contextlib.suppress(Exception):  # runs of a killed earlier attempt in this workspace -> KILLED
            mark_killed_runs(self.client, self.exp_id, ws.root)
        self._sweep_orphan_models()
        self.parent_id = self._parent()
        with contextlib.suppress(Exception):
            lineage.backfill_self_hashes(self.client, self.parent_id, ws.root)
        name = stage if self.round is None else f"{stage}-round-{int(self.round):03d}"
        tags = {"gapo.stage": stage, **lineage.run_tags(ws.root), "gapo.workspace": str(ws.root), **_process_tags()}
        if self.round is not None:
            tags["gapo.round"] = str(int(self.round))
        if params.tracking.system_metrics:
            mlflow.set_system_metrics_sampling_interval(params.tracking.system_metrics_interval_s)
        self.run = mlflow.start_run(run_name=name, parent_run_id=self.parent_id, tags=_safe_tags(tags),
                                    log_system_metrics=params.tracking.system_metrics)
        self.run_id = self.run.info.run_id
        mlflow.log_params(flat_params(params))
        if cli_args:
            mlflow.log_params(_safe_tags({f"cli.{k}": v for k, v in cli_args.items()}))

    def _sweep_orphan_models(self) -> None:
        """Logged models of a killed `register` in this workspace that no version uses (gapo.sweep); only under the
        stage lock (`gapo <stage>`), and a failure is a warning: tidying up must not cost the stage."""
        from gapo.io import holds_workspace_lock

        if not holds_workspace_lock(self.ws.root, "stage"):
            return
        from gapo.sweep import report, sweep_orphan_models

        try:
            report("logged model(s)", sweep_orphan_models(self.client, self.exp_id, self.ws.root))
        except Exception as exc:  # noqa: BLE001
            _warn(f"orphan logged models not swept: {type(exc).__name__}: {exc}")

    def _parent(self) -> str:
        client = self.client
        given = os.environ.get(backend.ENV_PARENT_RUN)
        if given:
            return given
        key, trigger = pipeline_key()
        found = client.search_runs([self.exp_id], filter_string=f"tags.`gapo.pipeline_key` = '{key}'",
                                   max_results=1)
        self.owns_parent = True
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        name = {"dvc": f"dvc repro {stamp}", "manual": f"{key}", "cli": f"gapo {self.stage} {stamp}"}[trigger]
        run = client.create_run(self.exp_id, run_name=name,
                                tags=_safe_tags({"gapo.pipeline_key": key, "gapo.trigger": trigger,
                                                 "gapo.role": "pipeline", "gapo.workspace": str(self.ws.root),
                                                 **(_process_tags() if trigger == "cli" else {}),
                                                 **lineage.git_info(self.ws.root)}))
        flat = flat_params(self.params)
        items = list(flat.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        return run.info.run_id

    # -- after the stage -------------------------------------------------------------------------------------------
    def _fresh(self, rel: str) -> Path | None:
        path = self.ws.root / rel
        if path.is_file() and path.stat().st_mtime >= self.started - 1.0:
            return path
        return None

    def log_outputs(self, result: Any) -> None:
        mlflow = self.mlflow
        metrics_files, plot_files = stage_files(self.ws.root, self.stage)
        for rel in metrics_files:
            path = self._fresh(rel)
            if path is not None:
                try:
                    values = numeric_metrics(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError) as exc:
                    _warn(f"{rel}: not logged ({exc})")
                    continue
                if values:
                    mlflow.log_metrics(values)
                mlflow.log_artifact(str(path), artifact_path="metrics")
        for rel in plot_files:
            path = self._fresh(rel)
            if path is None:
                continue
            if rel == ROUND_PLOTS:
                self._log_rounds(path)
            elif path.suffix == ".csv":
                self._log_curve(path)
            mlflow.log_artifact(str(path), artifact_path="plots")  # CSVs and figures (reports/*.png)
        if result is not None:
            with contextlib.suppress(TypeError, ValueError):
                mlflow.log_dict(json.loads(json.dumps(result, default=str)), "stage_result.json")

    def _log_curve(self, path: Path, rows=None, step_col=None) -> None:
        from mlflow.entities import Metric

        if rows is None:
            step_col, rows = read_curve(path)
        now = int(time.time() * 1000)
        batch = []
        for i, row in enumerate(rows):
            step = int(row[step_col]) if step_col and step_col in row else i
            for col, value in row.items():
                if col != step_col:
                    batch.append(Metric(metric_key(f"{path.stem}/{col}"), value, now, step))
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def _log_rounds(self, path: Path) -> None:
        """Round curves on the stage run (step = round) and one child run per round with its row."""
        step_col, rows = read_curve(path)
        if step_col != "round":
            self._log_curve(path, rows=rows, step_col=step_col)
            return
        if self.round is not None:  # one Prefect task per round: this run IS the round's run
            rows = [r for r in rows if int(r.get("round", -1)) == int(self.round)]
        self._log_curve(path, rows=rows, step_col=step_col)
        if self.round is not None:
            return
        tags = {"gapo.stage": self.stage, "gapo.role": "round"}
        for row in rows:
            k = int(row["round"])
            child = self.client.create_run(
                self.exp_id, run_name=f"round-{k:03d}",
                tags={**tags, "gapo.round": str(k), "mlflow.parentRunId": self.run_id})
            values = {metric_key(c): v for c, v in row.items() if c != "round"}
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(child.info.run_id, metrics=[Metric(c, v, now, k) for c, v in values.items()])
            self.client.set_terminated(child.info.run_id, "FINISHED")

    def close(self, error: BaseException | None) -> None:
        status = "FINISHED"
        if error is not None:
            status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
            with contextlib.suppress(Exception):
                from gapo.redaction import redact_text

                self.mlflow.set_tag("gapo.error", redact_text(f"{type(error).__name__}: "
                                                              f"{str(error).splitlines()[0][:400]}")
                                    if str(error) else type(error).__name__)
        self.mlflow.end_run(status=status)
        if self.owns_parent:
            self.client.set_terminated(self.parent_id, "FINISHED" if status == "FINISHED" else "FAILED")


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (Prefect timeout, `kill`) -> SystemExit, so the run is closed as KILLED, not left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def stage_run(stage: str, params: Params, ws: Workspace, cli_args: dict | None = None) -> Iterator[Any]:
    """Context manager around one stage execution; yields the tracker (None when tracking is off/unavailable).
    Set `tracker.result` inside the block to have the stage's return value stored as `stage_result.json`."""
    tracker = None
    if backend.tracking_enabled():
        try:
            tracker = _StageTracker(stage, params, ws, dict(cli_args or {}))
        except Exception as exc:  # noqa: BLE001 - tracking must never cost a training run
            _warn(f"stage {stage!r} runs untracked: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            with contextlib.suppress(Exception):
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.end_run(status="FAILED")
    if tracker is None:
        yield None
        return
    tracker.result = None
    with _sigterm_as_exit():
        try:
            yield tracker
        except BaseException as exc:
            with contextlib.suppress(Exception):
                tracker.close(exc)
            raise
    try:
        tracker.log_outputs(tracker.result)
    except Exception as exc:  # noqa: BLE001
        _warn(f"stage {stage!r}: outputs not fully logged: {type(exc).__name__}: {exc}")
    try:
        tracker.close(None)
    except Exception as exc:  # noqa: BLE001
        _warn(f"stage {stage!r}: run not closed cleanly: {exc}")


def tracked(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for `fn(params, ws, **cli_args)`: runs it inside `stage_run(stage, ...)`."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if getattr(fn, "__gapo_tracked__", None):
            return fn

        @functools.wraps(fn)
        def wrapper(params: Params, ws: Workspace, **cli_args: Any) -> Any:
            if backend.tracking_enabled():  # bad input fails here, before any MLflow run exists (gapo.preflight)
                from gapo.preflight import PREFLIGHT

                if stage in PREFLIGHT:
                    PREFLIGHT[stage](params, ws, **cli_args)
            with stage_run(stage, params, ws, cli_args) as tracker:
                result = fn(params, ws, **cli_args)
                if tracker is not None:
                    tracker.result = result
            return result

        wrapper.__gapo_tracked__ = stage
        return wrapper

    return decorate
