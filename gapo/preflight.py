"""What a stage checks about its inputs before the MLflow run of the call is opened (gapo.tracking.runs.tracked).

A command that fails on its input must leave the workspace as it was, its MLflow store included: without this, every
failed `gapo prepare` with a bad user file added a FAILED stage run and a FAILED parent run. Each check here calls
the same function the stage itself calls first, so the message is the stage's own; the stage repeats it (user files
are read once: gapo.data.loaders caches a validated file by its size and modification time).
Numerical faults and errors later in a stage still end as FAILED runs: they are results worth keeping.
"""
from __future__ import annotations

from typing import Any, Callable

from gapo.config import Params
from gapo.paths import Workspace


def prepare(params: Params, ws: Workspace, **_: Any) -> None:
    from gapo.data.loaders import load_user_data

    load_user_data(params.data.user, params.seed, params.data.validation_fraction)


def models(params: Params, ws: Workspace, **_: Any) -> None:
    from gapo.models.materialize import check_sources

    check_sources(params)


def evaluate(params: Params, ws: Workspace, input_path: str | None = None, responses_path: str | None = None,
             **_: Any) -> None:
    from gapo.eval.evaluate import resolve_input
    from gapo.eval.scoring import load_inputs, load_responses

    path = resolve_input(params, ws, input_path)
    load_inputs(path, params.data.user.max_line_bytes)
    if responses_path is not None:
        load_responses(responses_path, params.data.user.max_line_bytes)
        return
    spec = params.evaluate.model or str(ws.final / "policy")
    if not spec.startswith("models:/"):
        from gapo.models.loading import check_model_dir, resolve_model_dir

        check_model_dir(resolve_model_dir(spec, "policy", params.models), "policy", params.models)


PREFLIGHT: dict[str, Callable[..., None]] = {"prepare": prepare, "models": models, "evaluate": evaluate}
