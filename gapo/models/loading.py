"""Safe loading and atomic saving of the policy (causal LM) and the reward model (encoder + 1-logit head).

API
- `resolve_model_dir(spec, role, cfg)` -> Path   a dir, a dir holding `source.json`, or an HF id in the local cache
- `load_policy(spec, cfg)` -> (model, tokenizer)         `AutoModelForCausalLM`
- `load_reward_model(spec, cfg)` -> (model, tokenizer)   `AutoModelForSequenceClassification(num_labels=1)`, forward
  under bf16 autocast where the device has native bf16 (`models.reward_autocast`)
- `load_tokenizer(spec, cfg, role)`
- `save_pretrained(model, tokenizer, out_dir, extra_json=None)`  atomic HF dir, safetensors only
- `write_source_pointer(out_dir, source, **info)` / `read_source_pointer(dir)`   `source.json` for user models
- `is_encoder_config(config)`

Every refusal is a `ModelError` with one line naming the role, the path and what was expected: a missing path, a
directory that is not a model (no config.json), a pickle-only checkpoint (`.bin`/`.pt`; arbitrary code on load)
unless `models.allow_pickle`, remote code unless `models.trust_remote_code`, and a decoder given as reward model.
All loads are offline (`local_files_only=True`).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Optional

from gapo.config import ModelsConfig
from gapo.errors import ModelError

SOURCE_FILE = "source.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ------------------------------------------------------------------------------------------ resolution
def read_source_pointer(path: Path) -> Optional[dict]:
    f = Path(path) / SOURCE_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{f}: unreadable source pointer ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("source"), str):
        raise ModelError(f"{f}: expected a JSON object with a string field 'source'")
    return data


def write_source_pointer(out_dir: Path, source: str, **info: Any) -> None:
    """models/<role>/source.json: use a user model (or a converted cache) in place, instead of copying GBs."""
    from gapo.io import atomic_dir, write_json

    with atomic_dir(out_dir) as tmp:
        write_json(tmp / SOURCE_FILE, {"source": source, **info})


def resolve_model_dir(spec: str | Path, role: str, cfg: Optional[ModelsConfig] = None) -> Path:
    """Local directory holding the model named by `spec`: a directory (following `source.json`), or an HF
    hub id already in the local cache. Raises ModelError otherwise."""
    cfg = cfg or ModelsConfig()
    text = str(spec)
    if text.startswith("builtin:"):
        raise ModelError(f"{role} {text!r}: builtin models are materialised by `gapo models` into models/{role}; "
                         f"load that directory instead")
    path = Path(text).expanduser()
    if path.is_dir():
        ptr = read_source_pointer(path)
        if ptr is not None:
            target = ptr.get("path") or ptr["source"]
            if ptr["source"] == "builtin:smollm2" and not Path(target).is_dir():
                # The converted cache lives outside the repo and may have been cleaned: rebuild it (~40 s).
                from gapo.models.materialize import ensure_smollm2

                ensure_smollm2(Path(target))
            return resolve_model_dir(target, role, cfg)
        return path
    if path.exists():
        raise ModelError(f"{role} {text!r}: is a file, expected a model directory (config.json + weights)")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local or not _HF_ID.match(text):
        raise ModelError(f"{role} {text!r}: no such directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelError(f"{role} {text!r}: no such directory, and not an HF id in the local cache "
                         "(offline: download it elsewhere and pass its directory)") from None


def check_model_dir(path: Path, role: str, cfg: ModelsConfig) -> None:
    """config.json present, safetensors weights present (or pickle weights explicitly allowed)."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{role} {str(path)!r}: not a model directory (no config.json)")
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        if cfg.allow_pickle:
            return
        raise ModelError(f"{role} {str(path)!r}: pickle-only checkpoint ({', '.join(pickles[:3])}) can run arbitrary "
                         "code when loaded; convert it to safetensors or set models.allow_pickle=true")
    raise ModelError(f"{role} {str(path)!r}: no weights (*.safetensors) in the directory")


def _load_config(path: Path, role: str, cfg: ModelsConfig):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):  # transformers names it on a later line
            raise ModelError(f"{role} {str(path)!r}: needs custom code from the checkpoint; set "
                             "models.trust_remote_code=true only if you trust it") from None
        raise ModelError(f"{role} {str(path)!r}: unreadable config.json ({msg})") from None
    except OSError as exc:
        raise ModelError(f"{role} {str(path)!r}: unreadable config.json ({str(exc).splitlines()[0]})") from None


def is_encoder_config(config) -> bool:
    """Bidirectional encoder (BERT, RoBERTa, DeBERTa, Longformer, ModernBERT, ...): a masked-LM family that is
    not configured as a decoder. Causal LMs (Llama, Qwen, GPT-2, ...) are not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return False
    if getattr(config, "is_decoder", False):
        return False
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def quiet_transformers() -> None:
    """No per-file progress bars ("Loading weights", "Writing model shards"): they flood stage logs and tqdm."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _dtype(cfg: ModelsConfig):
    import torch

    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def load_tokenizer(spec: str | Path, cfg: Optional[ModelsConfig] = None, role: str = "policy"):
    from transformers import AutoTokenizer

    cfg = cfg or ModelsConfig()
    path = resolve_model_dir(spec, role, cfg)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{role} {str(path)!r}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None


def load_policy(spec: str | Path, cfg: Optional[ModelsConfig] = None, role: str = "policy"):
    """(AutoModelForCausalLM, tokenizer) from a directory or cached HF id, in `cfg.dtype`."""
    from transformers import AutoModelForCausalLM

    cfg = cfg or ModelsConfig()
    path = resolve_model_dir(spec, role, cfg)
    check_model_dir(path, role, cfg)
    config = _load_config(path, role, cfg)
    if is_encoder_config(config):
        raise ModelError(f"{role} {str(path)!r}: is an encoder ({config.model_type}); the policy must be a causal LM")
    model = _from_pretrained(AutoModelForCausalLM, path, role, cfg)
    tok = load_tokenizer(path, cfg, role)
    if tok.eos_token_id is None:
        raise ModelError(f"{role} {str(path)!r}: tokenizer has no eos_token; responses could never end")
    return model, tok


def load_reward_model(spec: str | Path, cfg: Optional[ModelsConfig] = None, role: str = "reward"):
    """(AutoModelForSequenceClassification with one logit, tokenizer). The RM must be an encoder: GAPO's premise
    is that bidirectional attention sees prompt/response mismatches a causal model misses."""
    from transformers import AutoModelForSequenceClassification

    cfg = cfg or ModelsConfig()
    path = resolve_model_dir(spec, role, cfg)
    check_model_dir(path, role, cfg)
    config = _load_config(path, role, cfg)
    if not is_encoder_config(config):
        raise ModelError(f"{role} {str(path)!r}: is a decoder-only model ({config.model_type}); the reward model must "
                         "be an encoder (BERT, RoBERTa, DeBERTa, Longformer, ModernBERT, MiniLM)")
    model = _from_pretrained(AutoModelForSequenceClassification, path, role, cfg, num_labels=1)
    tok = load_tokenizer(path, cfg, role)
    apply_autocast(model, cfg.reward_autocast, cfg)
    return model, tok


def apply_autocast(model, mode: str, cfg: ModelsConfig) -> None:
    """Run `model`'s forward under `autocast_context(mode)` (models.reward_autocast) on whatever device it sits on
    when called, returning float32 logits. Weights, gradients, the optimizer and saved checkpoints stay float32:
    only the matmuls drop to bf16 (MiniLM training 1.46x faster on the 2-core AVX512-BF16 box, docs/benchmarks.md).
    `none`, or a model not loaded in float32, leaves the module untouched."""
    if mode == "none" or cfg.dtype != "float32":
        return
    inner = model.forward
    first = next(model.parameters(), None)

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with autocast_context(first.device.type if first is not None else "cpu", mode, cfg):
            out = inner(*args, **kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.float()
        return out

    model.forward = forward


def autocast_context(device_type: str, mode: str, cfg: ModelsConfig):
    """torch.autocast(bfloat16) for one region (sft.autocast around the SFT training forward; every RM forward via
    `apply_autocast`), or a no-op: off for `none`, for non-float32 models, and for `auto` where bf16 is not native.
    SFT uses the context, not a patched forward, because the KV-cached sampler calls the policy's layers directly
    and must never mix dtypes."""
    import contextlib

    import torch

    if mode == "none" or cfg.dtype != "float32" or (mode == "auto" and not native_bf16(device_type)):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run natively (not emulated, which is slower than fp32)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _from_pretrained(auto_cls, path: Path, role: str, cfg: ModelsConfig, **kwargs):
    import warnings

    quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*newly initialized.*")
            return auto_cls.from_pretrained(path, dtype=_dtype(cfg), trust_remote_code=cfg.trust_remote_code,
                                            local_files_only=True, use_safetensors=None if cfg.allow_pickle else True,
                                            **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{role} {str(path)!r}: cannot load as {auto_cls.__name__} "
                         f"({str(exc).splitlines()[0][:200]})") from None


# ------------------------------------------------------------------------------------------ saving
def save_pretrained(model, tokenizer, out_dir: str | Path, extra_json: Optional[dict[str, Any]] = None,
                    state_dict: Optional[dict] = None) -> Path:
    """Write an HF directory atomically: safetensors weights, config, tokenizer, plus `extra_json` files
    ({name: obj}). `state_dict` overrides the module's (ZeRO-3 consolidated weights)."""
    from gapo.io import atomic_dir, write_json

    quiet_transformers()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)  # v5 writes safetensors only
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json(tmp / name, obj)
    return out_dir
