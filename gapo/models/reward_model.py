"""Reward-model kinds: the encode / score / loss interface every RM goes through, one class per kind, and the one
batching function that training, PPO scoring, evaluation and the served pyfunc share.

Two kinds, both `AutoModelForSequenceClassification` with one logit and both fed `(prompt, response)` text pairs
in their own tokenizer (gapo.models.rm_inputs):
- `EncoderRM` ("encoder"): GAPO's discriminator. A bidirectional encoder trained with BCE on rows (label 1 for the
  accepted pair, 0 for the rejected prompt or a generated answer); it stores its prompt layout
  (`reward.prompt_facts`) in its config and may freeze its bottom layers.
- `DecoderRM` ("decoder"): the PPO baseline's RM, the policy's architecture with a scalar head (the model pools the
  last non-pad token), trained Bradley-Terry on pairs.

API
- `Encoded`   (ids, token type ids, label) of one row
- `encode_rows(tokenizer, rows, max_length, facts=True)` -> list[Encoded]   rows: `prompt`, `response`[, `label`]
- `collate(encoded, tokenizer)` -> {input_ids, attention_mask, labels[, token_type_ids]}   right-padded
- `keeps_facts(model)` -> bool; `LAYOUT_KEY`   the prompt layout stored in the RM's config (absent = keep)
- `freeze_bottom_layers(model, n)` -> trainable parameter count   (BERT-family `encoder.layer`)
- `RMKind` (protocol), `ENCODER`, `DECODER`, `KINDS` (name -> kind)
- `kind_of(model_or_config)` -> RMKind     which kind a loaded model (or its config) is
- `require_kind(config, kind, role, where)`   ModelError unless `config` is a checkpoint of `kind`
A kind: `matches(config)`, `mismatch(config)` (why not, one phrase), `load(path, cfg, role)` -> (model, tokenizer),
`prepare(model, reward_cfg)` (before its first training step), `encode(tokenizer, examples, max_length, facts)`,
`score(model, batch)` -> FloatTensor [B], `loss(scores, batch)` (gapo.train.losses).

Adding a kind is a class here and its entry in `KINDS`: loading (`gapo.models.loading.load_reward_model`), the
models stage's checks and every scorer dispatch through `require_kind` / `kind_of`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

from gapo.errors import ModelError

Encoded = tuple[list[int], list[int], float]  # ids, token type ids, label

LAYOUT_KEY = "gapo_rm_prompt_facts"  # config.json attribute: the prompt layout the RM was trained with
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------------ shared by every kind
def encode_rows(tokenizer, rows: Sequence[dict], max_length: int, facts: bool = True) -> list[Encoded]:
    from gapo.models.rm_inputs import encode_pair_ids

    out = []
    for r in rows:
        ids, types, _ = encode_pair_ids(tokenizer, r["prompt"], r["response"], max_length, facts)
        out.append((ids, types, float(r.get("label", 0))))
    return out


def uses_token_types(tokenizer) -> bool:
    """BERT-style tokenizers produce segment ids; RoBERTa-style and causal models have no segment embedding."""
    return "token_type_ids" in getattr(tokenizer, "model_input_names", [])


def collate(encoded: Sequence[Encoded], tokenizer) -> dict:
    """Right-padded LongTensors (+ float `labels`) for one forward; the one batching function of every RM path, so a
    served or PPO score sees exactly the tensors training saw."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(e[0]) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    types = torch.zeros((len(encoded), width), dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, t, _) in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
        types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = 1
    out = {"input_ids": ids, "attention_mask": mask,
           "labels": torch.tensor([e[2] for e in encoded], dtype=torch.float32)}
    if uses_token_types(tokenizer):
        out["token_type_ids"] = types
    return out


def keeps_facts(model) -> bool:
    """Whether this RM reads the product facts (`reward.prompt_facts`); the warm-up stores the layout in the model's
    config, so every later scorer (PPO, rounds, evaluate, serving) encodes as the RM was trained. Absent = keep."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return getattr(cfg, LAYOUT_KEY, "keep") != "drop"


def freeze_bottom_layers(model, n: int) -> int:
    """Freeze the embeddings and the first `n` encoder layers (BERT-family `encoder.layer`); returns how many
    parameters stay trainable. n = 0 leaves the model as it is."""
    from gapo.config import ConfigError

    if n <= 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if base is None or layers is None or not hasattr(base, "embeddings"):
        raise ConfigError("reward.freeze_layers: the reward model has no BERT-style embeddings/encoder.layer")
    if n >= len(layers):
        raise ConfigError(f"reward.freeze_layers: {n} must be below the encoder's {len(layers)} layers")
    base.embeddings.requires_grad_(False)
    for layer in layers[:n]:
        layer.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _head_logit(model, batch: dict):
    # One-logit sequence-classification head, read in float32 whatever the forward's dtype (autocast, bf16).
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits[:, 0].float()


# ------------------------------------------------------------------------------------------ the kinds
class RMKind(Protocol):
    name: str

    def matches(self, config) -> bool: ...
    def mismatch(self, config) -> str: ...
    def load(self, path: Path, cfg, role: str) -> tuple[Any, Any]: ...
    def prepare(self, model, reward_cfg) -> None: ...
    def encode(self, tokenizer, examples: Sequence[dict], max_length: int, facts: bool = True) -> list[Encoded]: ...
    def score(self, model, batch: dict): ...
    def loss(self, scores, batch: dict): ...


class EncoderRM:
    """Encoder + 1-logit head on [CLS], BCE on (prompt, response, label) rows: bidirectional attention sees the
    prompt and the response at once, GAPO's argument for an encoder discriminator."""

    name = "encoder"

    def matches(self, config) -> bool:
        from gapo.models.loading import is_encoder_config

        return is_encoder_config(config)

    def mismatch(self, config) -> str:
        return (f"is a decoder-only model ({config.model_type}); the reward model must be an encoder (BERT, RoBERTa, "
                "DeBERTa, Longformer, ModernBERT, MiniLM)")

    def load(self, path: Path, cfg, role: str):
        from transformers import AutoModelForSequenceClassification

        from gapo.models.loading import apply_autocast, load_checked, load_tokenizer

        model = load_checked(AutoModelForSequenceClassification, path, role, cfg, num_labels=1)
        tok = load_tokenizer(path, cfg, role)
        apply_autocast(model, cfg.reward_autocast, cfg)
        return model, tok

    def prepare(self, model, reward_cfg) -> None:
        if getattr(model, "config", None) is not None:
            setattr(model.config, LAYOUT_KEY, reward_cfg.prompt_facts)
        freeze_bottom_layers(model, reward_cfg.freeze_layers)

    def encode(self, tokenizer, examples: Sequence[dict], max_length: int, facts: bool = True) -> list[Encoded]:
        return encode_rows(tokenizer, examples, max_length, facts)

    def score(self, model, batch: dict):
        return _head_logit(model, batch)

    def loss(self, scores, batch: dict):
        from gapo.train.losses import binary_cross_entropy_loss

        return binary_cross_entropy_loss(scores, batch["labels"])


class DecoderRM:
    """The policy's causal LM + scalar head (`AutoModelForSequenceClassification` pools the last non-pad token),
    Bradley-Terry on pairs `{prompt_chosen, chosen, prompt_rejected, rejected}`: InstructGPT's / OpenRLHF's RM."""

    name = "decoder"

    def matches(self, config) -> bool:
        from gapo.models.loading import is_encoder_config

        return not is_encoder_config(config)

    def mismatch(self, config) -> str:
        return f"is an encoder ({config.model_type}); a decoder reward model must be a causal LM"

    def load(self, path: Path, cfg, role: str):
        """From the SFT checkpoint the head is new (and its LM head unused); from a saved decoder RM it is loaded."""
        import warnings

        from transformers import AutoModelForSequenceClassification

        from gapo.models.loading import load_tokenizer, quiet_transformers, torch_dtype
        from gapo.models.prompting import pad_token_id

        quiet_transformers()
        tok = load_tokenizer(path, cfg, role)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=torch_dtype(cfg), local_files_only=True, use_safetensors=True,
                trust_remote_code=cfg.trust_remote_code, pad_token_id=pad_token_id(tok))
        model.config.pad_token_id = pad_token_id(tok)
        return model, tok

    def prepare(self, model, reward_cfg) -> None:
        """Nothing: every layer trains and the prompt is always whole."""

    def encode(self, tokenizer, examples: Sequence[dict], max_length: int, facts: bool = True) -> list[Encoded]:
        """All chosen sides, then all rejected sides: `loss` and `chosen_rejected` split a batch's scores in half."""
        rows = [{"prompt": p["prompt_chosen"], "response": p["chosen"], "label": 1} for p in examples]
        rows += [{"prompt": p["prompt_rejected"], "response": p["rejected"], "label": 0} for p in examples]
        return encode_rows(tokenizer, rows, max_length, facts)

    def score(self, model, batch: dict):
        return _head_logit(model, batch)

    @staticmethod
    def chosen_rejected(scores):
        n = scores.shape[0] // 2
        return scores[:n], scores[n:]

    def loss(self, scores, batch: dict):  # noqa: ARG002 (the pairing is the batch's layout, not its labels)
        from gapo.train.losses import bradley_terry_loss

        return bradley_terry_loss(*self.chosen_rejected(scores))


ENCODER = EncoderRM()
DECODER = DecoderRM()
KINDS: dict[str, RMKind] = {k.name: k for k in (ENCODER, DECODER)}


def kind_of(model_or_config) -> RMKind:
    """The kind of a loaded RM (a module, an engine wrapping one, or a config): the first in `KINDS` that matches."""
    config = getattr(getattr(model_or_config, "module", model_or_config), "config", model_or_config)
    for kind in KINDS.values():
        if kind.matches(config):
            return kind
    raise ModelError(f"reward model ({getattr(config, 'model_type', type(config).__name__)}): none of the kinds "
                     f"{', '.join(KINDS)} takes it")


def require_kind(config, kind: str, role: str, where: str) -> RMKind:
    """`KINDS[kind]`, or a one-line ModelError naming the role, the path or spec and why the checkpoint is not one."""
    rm = KINDS[kind]
    if not rm.matches(config):
        raise ModelError(f"{role} {where!r}: {rm.mismatch(config)}")
    return rm
