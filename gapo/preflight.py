"""What a stage checks about its inputs before the MLflow run of the call is opened (gapo.tracking.runs.tracked).

A command that fails on its input must leave the workspace as it was, its MLflow store included: without this, every
failed `gapo prepare` with a bad user file added a FAILED stage run and a FAILED parent run. Every stage of
gapo.stages.STAGES that writes the workspace has an entry. Each check calls the same function the stage itself
calls first, so the message is the stage's own; the stage repeats it (user files are read once: gapo.data.loaders
caches a validated file by its size and modification time). The exception is the GAPO rounds' order checks, which
live inside gapo/train/adversarial.py's run_adversarial: `_gapo_rounds` restates them, and
tests/reliability/test_lifecycle.py compares each line with the stage's own (tracking off) so the two cannot drift.
Numerical faults and errors later in a stage still end as FAILED runs: they are results worth keeping.
"""
from __future__ import annotations

from typing import Any, Callable

from gapo.config import Params
from gapo.paths import Workspace


def prepare(params: Params, ws: Workspace, **_: Any) -> None:  # noqa: ARG001 (PREFLIGHT's common signature)
    from gapo.data.loaders import load_user_data

    load_user_data(params.data.user, params.seed, params.data.validation_fraction)


def models(params: Params, ws: Workspace, **_: Any) -> None:  # noqa: ARG001 (PREFLIGHT's common signature)
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


def sft(params: Params, ws: Workspace, **_: Any) -> None:
    from gapo.train.sft import check_sft_inputs

    check_sft_inputs(params, ws)


def rm_warmup(params: Params, ws: Workspace, **_: Any) -> None:
    from gapo.train.baselines import paradigm_workspace
    from gapo.train.reward import check_rm_warmup_inputs

    check_rm_warmup_inputs(params, paradigm_workspace(params, ws))  # the stage's own view of data/rm (gapo.stages)


def _checkpoints_exist(ws: Workspace) -> None:
    """The two warm-up checkpoints every method stage starts from (load_players / run_baseline check the same)."""
    from gapo.errors import DataError

    for p in (ws.sft, ws.rm_warmup):
        if not (p / "config.json").is_file():
            raise DataError(f"{p}: not found (run `gapo sft` and `gapo rm_warmup` first)")


def _gapo_rounds(params: Params, ws: Workspace, round: int | None) -> None:  # noqa: A002 (the CLI flag)
    """run_adversarial's checks, in its order (gapo/train/adversarial.py; tests/reliability/test_lifecycle.py
    compares every line with the stage's own, tracking off)."""
    from gapo.config import ConfigError
    from gapo.errors import DataError
    from gapo.train.round_state import completed_rounds, fingerprint

    n = params.adversarial.rounds
    if round is not None and not 1 <= round <= n:
        raise ConfigError(f"adversarial --round {round}: expected 1..{n} (adversarial.rounds = {n})")
    fp = fingerprint(params, ws)  # a missing input: the stage's own one-line DataError
    done = completed_rounds(ws, fp)
    if round is not None and round > done + 1:
        raise ConfigError(f"adversarial --round {round}: round {done + 1} is not complete yet; run rounds in order")
    if not [k for k in ([round] if round is not None else range(1, n + 1)) if k > done]:
        return  # nothing to train: the stage only rewrites its metrics and checkpoints/final
    _checkpoints_exist(ws)
    for p in (ws.jsonl("ifeval", "train"), ws.jsonl("rm", "train")):
        if not p.is_file():
            raise DataError(f"{p}: not found (run `gapo prepare` first)")


def adversarial(params: Params, ws: Workspace, round: int | None = None, **_: Any) -> None:  # noqa: A002
    from gapo.stages import method_params
    from gapo.train.baselines import check_baseline_stage, is_baseline, paradigm_workspace

    ws, params = paradigm_workspace(params, ws), method_params(params)
    if is_baseline(params):
        check_baseline_stage(params, round)
        _checkpoints_exist(ws)
    else:
        _gapo_rounds(params, ws, round)


def register(params: Params, ws: Workspace, **_: Any) -> None:
    from gapo.tracking.registry import check_register_inputs

    check_register_inputs(params, ws)


PREFLIGHT: dict[str, Callable[..., None]] = {"prepare": prepare, "models": models, "sft": sft,
                                             "rm_warmup": rm_warmup, "adversarial": adversarial,
                                             "evaluate": evaluate, "register": register}
