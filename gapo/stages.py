"""One function per pipeline stage: the only entry point the CLI, dvc.yaml and the Prefect flow call.

Each stage takes the validated `Params` and a `Workspace`, reads the files earlier stages wrote,
writes its own outputs atomically and returns a small JSON-able summary (paths, counts, metrics).
Heavy imports happen inside the functions so `gapo --help` stays fast.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from gapo.config import Params, render_params_yaml
from gapo.paths import Workspace


# The pipeline, in order: what `dvc repro` runs (dvc.yaml lists the same names; tests/orchestration/test_dvc_yaml.py
# checks it), the Prefect flow's tasks (adversarial as one task per round), and the stages that write the workspace
# and so take its lock (gapo.cli). `config`, `compare` and `lineage` are commands around the pipeline, not stages of it.
PIPELINE: tuple[str, ...] = ("prepare", "models", "sft", "rm_warmup", "adversarial", "evaluate", "register")
ROUNDS_STAGE = "adversarial"  # the stage the flow splits into `gapo adversarial --round k` tasks
# the stages whose recipe runs on every rank of a torchrun / deepspeed job when deepspeed.launcher asks for one
LAUNCHABLE: tuple[str, ...] = ("sft", "rm_warmup", "adversarial")


@dataclass
class StageSpec:
    fn: Callable[..., Any]
    help: str
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)
    print_result: bool = True

    @property
    def dests(self) -> list[str]:
        out = []
        for args, kwargs in self.arguments:
            out.append(kwargs.get("dest") or args[0].lstrip("-").replace("-", "_"))
        return out


def config(params: Params, ws: Workspace, write: str | None = None) -> None:  # noqa: ARG001 (every stage's signature)
    """Print (or write) the fully merged, validated params: how a profile becomes a params.yaml."""
    text = render_params_yaml(params)
    if write:
        from gapo.io import atomic_file

        with atomic_file(write) as fh:
            fh.write(text)
    else:
        print(text, end="")


def prepare(params: Params, ws: Workspace) -> dict:
    from gapo.data.prepare import run_prepare

    return run_prepare(params, ws)


def evaluate(params: Params, ws: Workspace, input_path: str | None = None, responses_path: str | None = None,
             output: str | None = None, samples: str | None = None, compare_sft: bool | None = None) -> dict:
    from gapo.eval.evaluate import run_evaluate
    from gapo.io import all_or_nothing

    with all_or_nothing():  # metrics, samples and figures all land, or none (a failed write undoes the others)
        return run_evaluate(params, ws, input_path, responses_path, output, samples, compare_sft)


def models(params: Params, ws: Workspace) -> dict:
    from gapo.models.materialize import run_models

    return run_models(params, ws)


def sft(params: Params, ws: Workspace) -> dict:
    from gapo.train.engine import maybe_relaunch
    from gapo.train.sft import run_sft

    # deepspeed.launcher torchrun / deepspeed: this same `gapo sft` on every rank of a launched job, rank 0's result
    launched = maybe_relaunch(["sft"], params, ws)
    return launched if launched is not None else run_sft(params, ws)


def rm_warmup(params: Params, ws: Workspace) -> dict:
    from gapo.train.baselines import paradigm_workspace
    from gapo.train.engine import maybe_relaunch
    from gapo.train.reward import run_rm_warmup

    # paradigm pr: the encoder RM warms up on the preferential-response pairs (gapo.train.baselines)
    ws = paradigm_workspace(params, ws)
    launched = maybe_relaunch(["rm_warmup"], params, ws)  # as in `sft`
    return launched if launched is not None else run_rm_warmup(params, ws)


def method_params(params: Params) -> Params:
    """The params the method stage runs with: `train_seed`, when set, is the seed of everything the stage draws
    (rounds, baselines, health eval)."""
    if params.train_seed is not None:
        return params.model_copy(update={"seed": params.train_seed})
    return params


def adversarial(params: Params, ws: Workspace, round: int | None = None) -> dict:  # noqa: A002 (the CLI flag)
    from gapo.train.adversarial import run_adversarial
    from gapo.train.baselines import check_baseline_stage, is_baseline, paradigm_workspace, run_baseline_stage
    from gapo.train.engine import maybe_relaunch

    ws, params = paradigm_workspace(params, ws), method_params(params)
    if is_baseline(params):  # method sft / ppo (decoder RM) / dpo / kto / orpo / simpo: docs/baselines.md
        check_baseline_stage(params, round)
        return run_baseline_stage(params, ws)
    # as in `sft`; `--round k` travels to the launched ranks (the Prefect flow runs one launched job per round)
    launched = maybe_relaunch(["adversarial"] + (["--round", str(round)] if round is not None else []), params, ws)
    return launched if launched is not None else run_adversarial(params, ws, round)


def compare(params: Params, ws: Workspace, collect_only: bool = False) -> dict:
    from gapo.compare.grid import run_compare

    return run_compare(params, ws, collect_only=collect_only)


STAGES: dict[str, StageSpec] = {
    "config": StageSpec(config, "print or write the merged, validated params",
                        [(("--write",), {"default": None, "help": "write to this file instead of stdout"})],
                        print_result=False),
    "prepare": StageSpec(prepare, "generate / load constraint data and write data/"),
    "models": StageSpec(models, "materialise models/policy and models/reward from models.policy / models.reward"),
    "sft": StageSpec(sft, "warm-up SFT of the policy on data/sft -> checkpoints/sft"),
    "rm_warmup": StageSpec(rm_warmup, "warm-up BCE training of the encoder RM on data/rm -> checkpoints/rm_warmup"),
    "adversarial": StageSpec(adversarial, "GAPO rounds: RM step on fresh policy samples, then PPO against it; "
                                          "resumes after the last complete round -> checkpoints/rounds, final "
                                          "(method != gapo: the baseline, docs/baselines.md)", [
        (("--round",), {"type": int, "default": None, "metavar": "K",
                        "help": "run only round K (rounds 1..K-1 must be complete); default: every remaining round"}),
    ]),
    "evaluate": StageSpec(evaluate, "IFEval strict/loose accuracy (lm-eval's checkers), RM accuracy/AUC, KL to SFT", [
        (("--input",), {"dest": "input_path", "default": None, "metavar": "INPUT.jsonl",
                        "help": "IFEval-format prompts (key, prompt, instruction_id_list, kwargs); "
                                "default: params.evaluate.input, else data/ifeval/<evaluate.split>.jsonl"}),
        (("--responses",), {"dest": "responses_path", "default": None, "metavar": "RESPONSES.jsonl",
                            "help": "score these responses (jsonl of prompt, response) instead of generating"}),
        (("--output",), {"default": None, "metavar": "OUT.json",
                         "help": "metrics file (default: metrics/evaluate.json when generating; none when scoring)"}),
        (("--samples",), {"default": None, "metavar": "SAMPLES.jsonl",
                          "help": "per-prompt verdicts (default: reports/eval_samples.jsonl when generating)"}),
        (("--compare-sft",), {"dest": "compare_sft", "action": argparse.BooleanOptionalAction, "default": None,
                              "help": "also generate with checkpoints/sft on the same prompts and write the paired "
                                      "final-vs-SFT comparison (vs_sft); default: params.evaluate.compare_sft"}),
    ]),
}


# -- registry, lineage and MLflow tracking (gapo.tracking) -------------------------------------------------------------
def register(params: Params, ws: Workspace) -> dict:
    from gapo.tracking.registry import run_register

    return run_register(params, ws)


def lineage(params: Params, ws: Workspace, uri: str, as_json: bool = False) -> None:
    """Print the chain behind a registered model: version -> run -> Prefect flow run -> DVC hashes."""
    import json

    import mlflow

    from gapo.tracking import backend
    from gapo.tracking.lineage import format_report, lineage_report

    backend.configure(params, ws.root)
    report = lineage_report(mlflow.MlflowClient(), uri)
    print(json.dumps(report, indent=2, sort_keys=True) if as_json else format_report(report))


STAGES["compare"] = StageSpec(compare, "grid methods x paradigms x seeds as queued `dvc exp run`s -> "
                                       "reports/compare.md + reports/compare.png (mean, 95% CI over seeds)", [
    (("--collect-only",), {"dest": "collect_only", "action": "store_true",
                           "help": "queue and run nothing: build the report from the experiments DVC already has"}),
])
STAGES["register"] = StageSpec(register, "register the final policy and RM in MLflow (alias candidate) and run the "
                                         "promotion gate (alias champion)")
STAGES["lineage"] = StageSpec(lineage, "print a registered model's lineage: version -> run -> Prefect flow run -> "
                                       "DVC hashes of data and checkpoints", [
    (("uri",), {"metavar": "MODEL_URI", "help": "models:/<name>@<alias> or models:/<name>/<version>"}),
    (("--json",), {"dest": "as_json", "action": "store_true", "help": "print the report as JSON"}),
], print_result=False)

# Every pipeline stage run through STAGES (the CLI, hence dvc.yaml and the Prefect flow) is wrapped in an MLflow
# run (gapo.tracking.runs.tracked); the stage functions above stay free of MLflow. Stages added to STAGES must be
# added above this block to be tracked.
_UNTRACKED = {"config", "lineage"}


def _track_stages() -> None:
    from gapo.tracking.runs import tracked

    for name, spec in STAGES.items():
        if name not in _UNTRACKED:
            spec.fn = tracked(name)(spec.fn)


_track_stages()
