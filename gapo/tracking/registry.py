"""The `register` stage: new registry versions of the final policy and RM, and the promotion gate.

- `gapo-policy`: the transformers flavour (text-generation pipeline with its tokenizer), the policy's prompt
  format as `prompt_template` (so a served model takes the raw product-description prompt), and a signature
  whose params schema accepts generation settings per request (max_new_tokens, do_sample, temperature, top_p).
- `gapo-reward-model`: pyfunc (`reward_pyfunc`) scoring (prompt, response) pairs.
Both new versions get alias `candidate`, the evaluation metrics (`eval.*`), the lineage tags
(`gapo.tracking.lineage`) and, once the gate has decided, a model card (`gapo.tracking.model_card`: README.md in the
logged model and the version's description). The gate (`evaluate_gate`, config `registry.gate`) decides whether alias
`champion` moves to them: the candidate must beat the current champion's held-out prompt-level strict accuracy
by more than `min_improvement` (measured on the same test data), with KL to the SFT reference within
`kl_budget` and the last round's hack_gap within `hack_gap_budget`. Its inputs and verdict are stored as
`gate.*` tags on both versions. Reading the champion, deciding and moving the alias happen under one lock
(`promotion_lock`), so two pipeline runs that finish together cannot both read the old champion and leave
the worse model promoted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapo.config import GateConfig, Params
from gapo.errors import GapoError, ModelError
from gapo.io import content_hash
from gapo.paths import Workspace
from gapo.tracking import backend, lineage

CANDIDATE = "candidate"
CHAMPION = "champion"
PIP_REQUIREMENTS = ["mlflow==3.17.2", "transformers==5.24.0", "tokenizers==0.23.3", "torch==2.13.0",
                    "safetensors==0.8.0", "pandas"]
GENERATION_PARAMS = ("max_new_tokens", "do_sample", "temperature", "top_p")


# -- the gate (pure) ---------------------------------------------------------------------------------------------------
@dataclass
class GateVerdict:
    promote: bool
    reasons: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        tags = {f"gate.{k}": ("" if v is None else str(v)) for k, v in self.inputs.items()}
        tags["gate.verdict"] = "promoted" if self.promote else "rejected"
        tags["gate.reasons"] = "; ".join(self.reasons)[:4900]
        tags["gate.decided_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return tags


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def evaluate_gate(candidate: dict[str, Any], champion: dict[str, Any] | None, gate: GateConfig) -> GateVerdict:
    """candidate: {metric, kl, hack_gap, eval_set}; champion: {version, metric, eval_set} or None (no champion)."""
    cand, kl, gap = _num(candidate.get("metric")), _num(candidate.get("kl")), _num(candidate.get("hack_gap"))
    inputs = {"metric": gate.metric, "candidate_value": cand, "min_improvement": gate.min_improvement,
              "kl": kl, "kl_budget": gate.kl_budget, "hack_gap": gap, "hack_gap_budget": gate.hack_gap_budget,
              "eval_set": candidate.get("eval_set"),
              "champion_version": champion.get("version") if champion else None,
              "champion_value": _num(champion.get("metric")) if champion else None}
    ok, reasons = True, []
    if cand is None:
        ok = False
        reasons.append(f"candidate has no {gate.metric} in metrics/evaluate.json")
    if kl is None:
        ok = False
        reasons.append(f"KL to SFT ({gate.kl_metric}) not measured")
    elif kl > gate.kl_budget:
        ok = False
        reasons.append(f"KL {kl:.4g} > budget {gate.kl_budget:.4g}")
    else:
        reasons.append(f"KL {kl:.4g} <= budget {gate.kl_budget:.4g}")
    if gap is None:
        reasons.append("hack_gap not measured (no adversarial round)")
    elif gap > gate.hack_gap_budget:
        ok = False
        reasons.append(f"hack_gap {gap:.4g} > budget {gate.hack_gap_budget:.4g}")
    else:
        reasons.append(f"hack_gap {gap:.4g} <= budget {gate.hack_gap_budget:.4g}")
    if champion is None:
        if cand is not None:
            reasons.append(f"no champion yet ({gate.metric} {cand:.4g})")
    else:
        champ = _num(champion.get("metric"))
        cv = champion.get("version")
        if champ is None:
            ok = False
            reasons.append(f"champion v{cv} has no eval.{gate.metric} tag to compare with")
        elif (gate.require_same_eval_set and champion.get("eval_set") and candidate.get("eval_set")
              and champion["eval_set"] != candidate["eval_set"]):
            ok = False
            reasons.append(f"champion v{cv} was evaluated on other test data ({champion['eval_set'][:12]} vs "
                           f"{str(candidate['eval_set'])[:12]}); re-evaluate it on this set first")
        elif cand is not None and cand > champ + gate.min_improvement:
            reasons.append(f"{gate.metric} {cand:.4g} beats champion v{cv} {champ:.4g} (+{gate.min_improvement:g})")
        elif cand is not None:
            ok = False
            reasons.append(f"{gate.metric} {cand:.4g} does not beat champion v{cv} {champ:.4g} "
                           f"by more than {gate.min_improvement:g}")
    return GateVerdict(ok, reasons, inputs)


# -- inputs from the workspace ---------------------------------------------------------------------------------------------
def eval_set_id(params: Params, ws: Workspace) -> str | None:
    """Identity of the held-out prompts: the input file's md5 and the prompt cap."""
    path = Path(params.evaluate.input) if params.evaluate.input else ws.jsonl("ifeval", params.evaluate.split)
    path = path if path.is_absolute() else ws.root / path
    md5 = content_hash(path) if path.is_file() else None
    return None if md5 is None else f"{md5}:{params.evaluate.max_prompts}"


def last_round_hack_gap(ws: Workspace) -> float | None:
    from gapo.tracking.runs import read_curve

    path = ws.metrics_file("adversarial")
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            value = _num(json.loads(path.read_text(encoding="utf-8")).get("hack_gap"))
            if value is not None:
                return value
    csv_path = ws.plots / "adversarial.csv"
    if csv_path.is_file():
        _, rows = read_curve(csv_path)
        rows = [r for r in rows if "hack_gap" in r]
        if rows:
            return rows[-1]["hack_gap"]
    return None


def candidate_metrics(params: Params, ws: Workspace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gate inputs, flat numeric evaluate metrics)."""
    from gapo.tracking.runs import numeric_metrics

    path = ws.metrics_file("evaluate")
    if not path.is_file():
        raise GapoError(f"register: {path} not found (run `gapo evaluate` first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GapoError(f"register: {path}: not valid JSON ({type(exc).__name__}); rerun `gapo evaluate`") from None
    if not isinstance(metrics, dict):
        raise GapoError(f"register: {path}: expected a JSON object of metrics; rerun `gapo evaluate`")
    gate = params.registry.gate
    cand = {"metric": metrics.get(gate.metric), "kl": metrics.get(gate.kl_metric),
            "hack_gap": last_round_hack_gap(ws), "eval_set": eval_set_id(params, ws)}
    flat = {k: v for k, v in numeric_metrics(metrics).items() if "." not in k}  # top level, not breakdowns
    return cand, flat


# -- logging the two models -----------------------------------------------------------------------------------------------
def prompt_template(tokenizer) -> str:
    """The policy's prompt format with a `{prompt}` slot, as MLflow's `prompt_template` wants it."""
    from gapo.models.prompting import format_prompt

    marker = "\x00PROMPT\x00"
    text = format_prompt(marker, tokenizer)
    if text.count(marker) != 1:
        raise ModelError("policy prompt format does not contain the prompt exactly once")
    # str.format() is applied by MLflow: escape every other brace.
    return text.replace("{", "{{").replace("}", "}}").replace(marker, "{prompt}")


def log_policy(params: Params, policy_dir: Path):
    import mlflow
    from mlflow.models import infer_signature
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    # A checkpoint path (MLflow's memory-saving route) fails with transformers 5 (task metadata `impl` is a
    # string: AttributeError in build_flavor_config_from_local_checkpoint), so the components are passed.
    model = AutoModelForCausalLM.from_pretrained(policy_dir, use_safetensors=True)
    defaults = {"max_new_tokens": int(params.evaluate.max_new_tokens), "do_sample": not params.evaluate.greedy,
                "temperature": float(params.evaluate.temperature), "top_p": float(params.evaluate.top_p)}
    sig = infer_signature(["Write a product description."], ["A description."], params=defaults)
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer}, task="text-generation", name="policy",
        signature=sig, prompt_template=prompt_template(tokenizer),
        model_config=dict(defaults), pip_requirements=PIP_REQUIREMENTS,
        metadata={"gapo.role": "policy"})


def log_reward_model(params: Params, reward_dir: Path):
    import mlflow

    from gapo.tracking import reward_pyfunc

    code_root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="gapo-code-") as tmp:
        shutil.copytree(code_root, Path(tmp) / "gapo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name="reward_model", python_model=reward_pyfunc.RewardModelPyfunc(),
            artifacts={reward_pyfunc.ARTIFACT_KEY: str(reward_dir)}, signature=reward_pyfunc.signature(),
            model_config={"max_length": int(params.reward.max_length), "score": params.reward.score,
                          "batch_size": 32},
            code_paths=[str(Path(tmp) / "gapo")],
            pip_requirements=PIP_REQUIREMENTS, metadata={"gapo.role": "reward_model"})


# -- promotion -----------------------------------------------------------------------------------------------------------------
def lock_path(params: Params) -> Path:
    """One lock per registry and model name; GAPO_REGISTRY_LOCK_DIR may point at a shared (NFS) folder."""
    import mlflow

    ident = f"{mlflow.get_registry_uri()}|{params.registry.policy_name}"
    base = Path(os.environ.get("GAPO_REGISTRY_LOCK_DIR") or Path.home() / ".cache" / "gapo" / "locks")
    base.mkdir(parents=True, exist_ok=True)
    return base / f"registry-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.lock"


def champion_info(client, params: Params) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(params.registry.policy_name, CHAMPION)
    except MlflowException:
        return None
    tags = mv.tags or {}
    return {"version": mv.version, "metric": tags.get(f"eval.{params.registry.gate.metric}"),
            "eval_set": tags.get("eval.set")}


def promote(client, params: Params, versions: dict[str, str], candidate: dict[str, Any],
            hold_s: float = 0.0) -> GateVerdict:
    """Gate `versions` ({registered model name: version}, the policy first) against the current champion and
    move `champion` if it passes. `hold_s` keeps the lock longer (tests use it to force two runs to overlap)."""
    from filelock import FileLock

    with FileLock(str(lock_path(params)), timeout=params.registry.lock_timeout_s):
        verdict = evaluate_gate(candidate, champion_info(client, params), params.registry.gate)
        if hold_s:
            time.sleep(hold_s)
        for name, version in versions.items():
            for key, value in verdict.tags().items():
                client.set_model_version_tag(name, version, key, value)
        if verdict.promote:
            for name, version in versions.items():
                client.set_registered_model_alias(name, CHAMPION, version)
    return verdict


def check_register_inputs(params: Params, ws: Workspace) -> None:
    """What `register` reads, checked before anything is logged: the final models and metrics/evaluate.json. The
    stage calls it first, and gapo.preflight before the stage's MLflow run opens."""
    for what, path in (("policy", ws.final / "policy"), ("reward model", ws.final / "reward")):
        if not (path / "config.json").is_file():
            raise ModelError(f"register: final {what} {path} is not a saved HF model dir (run the adversarial stage)")
    candidate_metrics(params, ws)


def run_register(params: Params, ws: Workspace) -> dict[str, Any]:
    import mlflow

    policy_dir, reward_dir = ws.final / "policy", ws.final / "reward"
    check_register_inputs(params, ws)
    candidate, eval_metrics = candidate_metrics(params, ws)
    exp_id = backend.configure(params, ws.root)
    client = mlflow.MlflowClient()
    started_here = mlflow.active_run() is None
    if started_here:
        mlflow.start_run(run_name="register", tags={"gapo.stage": "register", **lineage.run_tags(ws.root)})
    try:
        run = mlflow.active_run()
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id:
            with contextlib.suppress(Exception):
                lineage.backfill_self_hashes(client, parent_id, ws.root)
        policy_info = log_policy(params, policy_dir)
        from gapo.train.guards import pause_point

        pause_point("register.policy_logged")  # kill tests (tests/reliability)
        reward_info = log_reward_model(params, reward_dir)
    except BaseException:
        if started_here:
            mlflow.end_run(status="FAILED")
        raise
    if started_here:
        mlflow.end_run()
    tags = {**lineage.version_tags(ws.root), "gapo.run_id": run.info.run_id,
            "gapo.pipeline_run_id": parent_id or "", "eval.set": candidate.get("eval_set") or "",
            **{f"eval.{k}": repr(v) for k, v in eval_metrics.items()}}
    if candidate.get("hack_gap") is not None:
        tags["eval.hack_gap"] = repr(candidate["hack_gap"])
    # Tags go in with the version (one request); setting ~100 tags one by one took ~10 min on a loaded server.
    versions = {}
    for name, info in ((params.registry.policy_name, policy_info), (params.registry.reward_model_name, reward_info)):
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        versions[name] = str(mv.version)
        client.set_registered_model_alias(name, CANDIDATE, mv.version)
    verdict = promote(client, params, versions, candidate)
    from gapo.tracking import model_card

    evaluation = json.loads(ws.metrics_file("evaluate").read_text(encoding="utf-8"))  # checked by candidate_metrics
    model_card.log_model_cards(
        client, params, ws, versions,
        {params.registry.policy_name: policy_info.model_id, params.registry.reward_model_name: reward_info.model_id},
        tags, evaluation, {"verdict": "promoted" if verdict.promote else "rejected",
                           "reasons": "; ".join(verdict.reasons)},
        candidate.get("hack_gap"), run.info.run_id, parent_id)
    champion = champion_info(client, params)
    result = {"policy_name": params.registry.policy_name, "policy_version": int(versions[params.registry.policy_name]),
              "reward_model_name": params.registry.reward_model_name,
              "reward_model_version": int(versions[params.registry.reward_model_name]),
              "promoted": verdict.promote, "champion_version": int(champion["version"]) if champion else None,
              "gate_reasons": verdict.reasons, "run_id": run.info.run_id, "experiment_id": exp_id,
              "policy_model_id": policy_info.model_id, "reward_model_id": reward_info.model_id,
              "tracking_uri": backend.redact(mlflow.get_tracking_uri()),
              "run_url": backend.redact(backend.ui_url(mlflow.get_tracking_uri(), exp_id, run.info.run_id))}
    from gapo.io import write_json

    write_json(ws.metrics_file("register"), result)
    print(f"registered {params.registry.policy_name} v{result['policy_version']} and "
          f"{params.registry.reward_model_name} v{result['reward_model_version']} as '{CANDIDATE}'; gate: "
          f"{'PROMOTED to ' + CHAMPION if verdict.promote else 'not promoted'} ({'; '.join(verdict.reasons)})")
    return result
