"""Which MLflow backend a stage talks to, and the environment variables that tie processes together.

The embedded default (`sqlite:///mlflow.db`, artifacts in `mlartifacts/`) is resolved against the *home*
workspace, not the current directory: a stage started by `dvc exp run --temp` / `--queue` runs in a copy under
`<repo>/.dvc/tmp/exps/...`, and its runs must land in the repository's database, not in a folder DVC deletes.
"""
from __future__ import annotations

import os
from pathlib import Path

from gapo.config import Params

# Set by the Prefect flow for the `gapo <stage>` subprocesses it starts.
ENV_PARENT_RUN = "GAPO_MLFLOW_PARENT_RUN_ID"      # nest stage runs under this run (the flow owns it)
ENV_FLOW_RUN_ID = "GAPO_PREFECT_FLOW_RUN_ID"      # lineage tag prefect.flow_run_id
ENV_FLOW_RUN_NAME = "GAPO_PREFECT_FLOW_RUN_NAME"
ENV_FLOW_RUN_URL = "GAPO_PREFECT_FLOW_RUN_URL"
# Optional, for people who run stages by hand and want them grouped under one parent run.
ENV_PIPELINE_KEY = "GAPO_PIPELINE_KEY"
ENV_TRACKING = "GAPO_TRACKING"                    # "off" / "0" / "false": stages run without MLflow


def tracking_enabled() -> bool:
    return os.environ.get(ENV_TRACKING, "on").strip().lower() not in ("0", "off", "false", "no")


def home_root(root: Path) -> Path:
    """The repository a (possibly temporary) DVC experiment workspace belongs to."""
    parts = root.resolve().parts
    for i in range(len(parts) - 3):
        if parts[i: i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root.resolve()


def tracking_uri(params: Params, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else params.tracking.tracking_uri; relative sqlite/file paths resolve against the
    home workspace so every stage (and the flow) of one workspace shares one store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    home = home_root(root)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(home / uri[len("sqlite:///"):])
    if "://" not in uri and not uri.startswith("databricks"):
        return str(home / uri)
    return uri


def artifact_location(params: Params, root: Path, uri: str) -> str | None:
    """Artifact root for a new experiment: only for local stores (a server decides its own)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    loc = params.tracking.artifact_location
    if "://" in loc:
        return loc
    return (home_root(root) / loc).resolve().as_uri()


def ensure_sqlite_store(uri: str) -> None:
    """Create a missing SQLite store whole, or not at all.

    MLflow creates its tables by running ~50 schema migrations in place; a process killed among them leaves a
    database whose schema is ahead of its recorded version, and every later run then fails on the next migration
    ("duplicate column name: run_link", found by the kill schedule, docs/reliability.md). So a new store is migrated
    in a temp sibling (`.<name>.<random>.tmp`, swept like an atomic write's) and hard-linked into place: the link
    fails if another process got there first, whose store is just as complete."""
    if not uri.startswith("sqlite:////"):  # tracking_uri made local stores absolute; anything else is not ours
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return
    import mlflow

    from gapo.io import tmp_sibling

    tmp = tmp_sibling(path)
    try:
        client = mlflow.MlflowClient(tracking_uri="sqlite:///" + str(tmp), registry_uri="sqlite:///" + str(tmp))
        client.search_experiments(max_results=1)  # the tracking store's migrations: every table, registry included
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def configure(params: Params, root: Path) -> str:
    """Point MLflow at the backend and make sure the experiment exists; returns its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(params, root)
    ensure_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or params.tracking.experiment
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location(params, root, uri))
        except MlflowException:  # created by a concurrent stage between our lookup and create
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def redact(uri: str) -> str:
    """A URI safe to print or store: user:password@ removed (credentials come from the environment only)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a person opens a run: the server itself, or `mlflow ui` (default port) for a local store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    url = f"{base}/#/experiments/{experiment_id}"
    return f"{url}/runs/{run_id}" if run_id else url
