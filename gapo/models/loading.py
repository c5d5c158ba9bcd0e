"""Safe loading and atomic saving of the policy (causal LM) and the reward model (1-logit head; its kinds live in
gapo.models.reward_model).

API
- `resolve_model_dir(spec, role, cfg)` -> Path   a dir, a dir holding `source.json`, or an HF id in the local cache
- `load_policy(spec, cfg)` -> (model, tokenizer)         `AutoModelForCausalLM`
- `load_reward_model(spec, cfg, role="reward", kind="encoder")` -> (model, tokenizer)
  `AutoModelForSequenceClassification(num_labels=1)` as the kind loads it (the encoder's forward under bf16 autocast
  where the device has native bf16, `models.reward_autocast`)
- `load_checked(auto_cls, path, role, cfg, **kwargs)` -> model   `from_pretrained` with one-line ModelErrors for
  missing / unexpected / wrong-shape keys
- `load_tokenizer(spec, cfg, role)`
- `save_pretrained(model, tokenizer, out_dir, extra_json=None)`  atomic HF dir, safetensors only
- `write_source_pointer(out_dir, source, **info)` / `read_source_pointer(dir)`   `source.json` for user models
- `is_encoder_config(config)`

Every refusal is a `ModelError` with one line naming the role, the path and what was expected: a missing path, a
directory that is not a model (no config.json), a pickle-only checkpoint (`.bin`/`.pt`; arbitrary code on load)
unless `models.allow_pickle`, remote code unless `models.trust_remote_code`, and a checkpoint of another kind
(a decoder given as the encoder reward model).
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


def resolve_model_dir(spec: str | Path, role: str, cfg: Optional[ModelsConfig] = None,
                      _seen: tuple[str, ...] = ()) -> Path:
    """Local directory holding the model named by `spec`: a directory (following `source.json`), or an HF
    hub id already in the local cache. Raises ModelError otherwise."""
    cfg = cfg or ModelsConfig()
    text = str(spec)
    if len(_seen) > 8 or text in _seen:  # models/policy/source.json -> ... -> itself
        chain = " -> ".join([*_seen, text][-4:])
        raise ModelError(f"{role} {_seen[0]!r}: source.json pointers form a loop or a chain longer than 8 ({chain})")
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
                from gapo.models.smollm2 import ensure_smollm2

                ensure_smollm2(Path(target))
            return resolve_model_dir(target, role, cfg, (*_seen, text))
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
        check_safetensors_files(path, role)
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        if cfg.allow_pickle:
            return
        raise ModelError(f"{role} {str(path)!r}: pickle-only checkpoint ({', '.join(pickles[:3])}) can run arbitrary "
                         "code when loaded; convert it to safetensors or set models.allow_pickle=true")
    raise ModelError(f"{role} {str(path)!r}: no weights (*.safetensors) in the directory")


# safetensors' own limit on the JSON header (larger = a header bomb: gigabytes of JSON parsed before any weight)
MAX_SAFETENSORS_HEADER = 100_000_000
_ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                   "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def read_safetensors_header(file: Path, role: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of one .safetensors file, after checking its structure without reading any
    weight: header length within the file and within MAX_SAFETENSORS_HEADER, a JSON object, each tensor's byte
    range inside the data section and as long as its dtype and shape say. ModelError names the file and the first
    bad tensor."""
    where = f"{role} {str(file.parent)!r}: {file.name}"
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelError(f"{where}: truncated or empty safetensors file ({size} bytes; expected an 8-byte "
                                 "header length, a JSON header, then the tensors)")
            n = int.from_bytes(head, "little")
            if n > MAX_SAFETENSORS_HEADER:
                raise ModelError(f"{where}: header length {n} bytes exceeds safetensors' limit of "
                                 f"{MAX_SAFETENSORS_HEADER} (corrupt file or header bomb)")
            if 8 + n > size:
                raise ModelError(f"{where}: truncated safetensors file (header of {n} bytes, file of {size} bytes)")
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{where}: unreadable safetensors header (not a JSON object)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{where}: unreadable safetensors header (not a JSON object)")
    data_size = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shown = name if len(name) <= 120 else name[:117] + "..."
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
        if not ok:
            raise ModelError(f"{where}: tensor {shown!r}: malformed header entry (expected dtype, shape, data_offsets)")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end or end > data_size:
            raise ModelError(f"{where}: tensor {shown!r}: bytes {begin}..{end} lie outside the file's "
                             f"{data_size} data bytes (truncated or corrupt file)")
        width = _ST_DTYPE_BYTES.get(info["dtype"])
        count = 1
        for d in info["shape"]:
            count *= d
        if width is not None and count * width != end - begin:
            raise ModelError(f"{where}: tensor {shown!r}: {end - begin} bytes for a {info['dtype']} tensor of shape "
                             f"{info['shape']} ({count * width} expected)")
        out[name] = (info["dtype"], tuple(info["shape"]))
    if not out:
        raise ModelError(f"{where}: holds no tensors")
    return out


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a model directory: the shards an index names (each must exist), else every
    *.safetensors file."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, ValueError, AttributeError):
            weight_map = None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{str(path)!r}: {index.name}: unreadable (expected a JSON object with a 'weight_map')")
        shards = sorted(set(map(str, weight_map.values())))
        for shard in shards:
            if "/" in shard or "\\" in shard or not (path / shard).is_file():
                raise ModelError(f"{str(path)!r}: {index.name}: shard {shard!r} is missing from the directory")
        return [path / s for s in shards]
    return sorted(path.glob("*.safetensors"))


def check_safetensors_files(path: Path, role: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every weight file's header checked (read_safetensors_header); returns the union {name: (dtype, shape)}."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in safetensors_files(path):
        tensors.update(read_safetensors_header(f, role))
    return tensors


# Weights of pre-training heads an encoder checkpoint may carry and a reward model does not use (MLM / NSP / ELECTRA
# heads); any other key the model does not have is an error.
PRETRAINING_HEADS = ("cls.", "lm_head.", "generator_lm_head.", "generator_predictions.", "discriminator_predictions.",
                     "mask_predictor.", "pooler.")


def _head_keys(model) -> set[str]:
    """Parameters of a task model outside its base model (the classification head: `classifier.*`, `score.*`)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or getattr(model, prefix, None) is None:
        return set()
    return {k for k in model.state_dict() if not k.startswith(prefix + ".")}


def check_loading_info(model, info: dict, path: Path, role: str, fresh_head_ok: bool) -> None:
    """Strict weight loading: every parameter of the model came from the checkpoint with its own shape. A model left
    partly at random initialisation (missing keys; a fresh classification head only for a reward model built on a
    headless encoder), with weights it does not use (unexpected keys; pre-training heads aside for a reward model)
    or with a wrong-shape tensor is refused with one line naming the weight file and the first bad key."""
    files = safetensors_files(path)
    wfile = files[0].name if len(files) == 1 else ("model.safetensors.index.json" if files else "weights")
    where = f"{role} {str(path)!r}: {wfile}"
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        item = mismatched[0]
        key = item[0] if isinstance(item, (tuple, list)) else item
        shapes = f" (checkpoint {tuple(item[1])}, model {tuple(item[2])})" if isinstance(item, (tuple, list)) \
            and len(item) >= 3 else ""
        raise ModelError(f"{where}: key {key!r} has the wrong shape{shapes}; {len(mismatched)} such key(s)")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        head = _head_keys(model) if fresh_head_ok else set()
        if not (head and set(missing) == head):
            bad = [k for k in missing if k not in head] or missing
            raise ModelError(f"{where}: key {bad[0]!r} of the model is missing from the checkpoint ({len(missing)} "
                             "missing; they would be left at random initialisation)")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if fresh_head_ok:
        unexpected = [k for k in unexpected if not k.startswith(PRETRAINING_HEADS)]
    if unexpected:
        raise ModelError(f"{where}: key {unexpected[0]!r} is not a weight of this model ({len(unexpected)} unexpected "
                         f"key(s); a checkpoint of another architecture?)")
    errors = [str(e).splitlines()[0] for e in info.get("error_msgs") or [] if str(e).strip()]
    if errors:
        raise ModelError(f"{where}: {errors[0][:200]}")


def check_checkpoint_keys(path: Path, config, role: str, cfg: ModelsConfig) -> None:
    """For `gapo models`, without loading any weight: compare the safetensors headers with the model the config
    builds (on the meta device): every parameter present (tied ones once), no foreign key, every shape equal. On a
    suspected problem the real loader decides (its key renaming rules are transformers' own) and raises the one
    line of `check_loading_info`; the weights of a clean checkpoint are never read here."""
    import copy
    import re as _re

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tensors = check_safetensors_files(path, role) if any(path.glob("*.safetensors")) else {}
    if not tensors:  # pickle weights (models.allow_pickle): checked when loaded
        return
    reward = role == "reward"
    auto_cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    config = copy.deepcopy(config)
    if reward:
        config.num_labels = 1
    try:
        with torch.device("meta"):
            model = auto_cls.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except Exception:  # noqa: BLE001 - an architecture transformers cannot build here: the load checks it
        return
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = getattr(model, "base_model_prefix", "") or ""

    def norm(key: str) -> Optional[str]:
        if key in shapes:
            return key
        if prefix and f"{prefix}.{key}" in shapes:
            return f"{prefix}.{key}"
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in shapes:
            return key[len(prefix) + 1:]
        return None

    ignore = [_re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
              if isinstance(p, str)]
    suspect, found = False, set()
    for key, (_, shape) in tensors.items():
        name = norm(key)
        if name is None:
            suspect |= not (reward and key.startswith(PRETRAINING_HEADS)) and not any(p.search(key) for p in ignore) \
                and not key.endswith((".position_ids", ".inv_freq"))  # old non-persistent buffers transformers skips
        elif shapes[name] != shape:
            suspect = True
        else:
            found.add(name)
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    missing = {n for names in groups.values() if not found.intersection(names) for n in names}
    head = _head_keys(model) if reward else set()
    if missing and not (head and missing <= head and not found.intersection(head)):
        suspect = True
    if suspect:
        load_checked(auto_cls, path, role, cfg, **({"num_labels": 1} if reward else {}))


def load_config(path: Path, role: str, cfg: ModelsConfig):
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


def torch_dtype(cfg: ModelsConfig):
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
    config = load_config(path, role, cfg)
    if is_encoder_config(config):
        raise ModelError(f"{role} {str(path)!r}: is an encoder ({config.model_type}); the policy must be a causal LM")
    model = load_checked(AutoModelForCausalLM, path, role, cfg)
    tok = load_tokenizer(path, cfg, role)
    if tok.eos_token_id is None:
        raise ModelError(f"{role} {str(path)!r}: tokenizer has no eos_token; responses could never end")
    return model, tok


def load_reward_model(spec: str | Path, cfg: Optional[ModelsConfig] = None, role: str = "reward",
                      kind: str = "encoder"):
    """(AutoModelForSequenceClassification with one logit, tokenizer) of the reward-model kind `kind`
    (gapo.models.reward_model). `models.reward` is always an encoder: GAPO's premise is that bidirectional attention
    sees prompt/response mismatches a causal model misses; the PPO baseline's RM is `kind="decoder"`."""
    from gapo.models.reward_model import require_kind

    cfg = cfg or ModelsConfig()
    path = resolve_model_dir(spec, role, cfg)
    check_model_dir(path, role, cfg)
    rm = require_kind(load_config(path, role, cfg), kind, role, str(path))
    return rm.load(path, cfg, role)


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


def load_checked(auto_cls, path: Path, role: str, cfg: ModelsConfig, **kwargs):
    import warnings

    from transformers.utils import logging as hf_logging

    quiet_transformers()
    verbosity = hf_logging.get_verbosity()
    try:
        # transformers logs its own LOAD REPORT table of missing/unexpected keys; check_loading_info raises one line
        hf_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*newly initialized.*")
            model, info = auto_cls.from_pretrained(path, dtype=torch_dtype(cfg),
                                                   trust_remote_code=cfg.trust_remote_code, local_files_only=True,
                                                   use_safetensors=None if cfg.allow_pickle else True,
                                                   ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{role} {str(path)!r}: cannot load as {auto_cls.__name__} "
                         f"({str(exc).splitlines()[0][:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    from transformers import AutoModelForSequenceClassification

    check_loading_info(model, info, path, role, fresh_head_ok=auto_cls is AutoModelForSequenceClassification)
    return model


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
