"""LoRA adapters on the policy (PEFT): one frozen base, a small trainable delta, and the reference for free.

API
- `lora_config(model, cfg)` -> peft.LoraConfig   the adapter `models.lora` describes (TRL's `peft_config`)
- `add_lora(model, cfg)` -> model          the same HF causal LM with PEFT's LoRA layers injected; only the adapter
      weights require grad. The HF module itself is returned (not the PeftModel around it), so `forward`,
      `logits_to_keep`, `generate` and the KV-cached sampler see the model they always saw.
- `has_lora(model)` -> bool
- `adapters_disabled(model)`               context manager: the forward is exactly the base model's (the PPO/DPO
      reference policy, without a second copy in memory)
- `AdapterOff(model)`                      a callable module view of the base (`ref(**batch)`), for code that takes a
      reference model
- `merged_state_dict(model)` -> dict       W + (α/r)·B·A under the base model's own key names, adapter keys dropped:
      what every checkpoint holds, so a saved policy loads with plain transformers (and the registry serves it)
- `adapter_state_dict(model)` -> dict      the adapter weights alone

Why PEFT on the inner module: `get_peft_model` returns a PeftModel whose `forward` hides `logits_to_keep` and whose
key names differ from the base model's; the layers it injects are ordinary modules of the HF model, and switching
them off with `enable_adapters(False)` is PEFT's own public layer API (what `PeftModel.disable_adapter` does).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from gapo.config import LoRAConfig

ADAPTER = "default"


def _lora_layers(model) -> Iterator[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def has_lora(model) -> bool:
    model = getattr(model, "module", model)
    return next(_lora_layers(model), None) is not None


def lora_config(model, cfg: LoRAConfig):
    """PEFT's LoraConfig for `model` from `models.lora` (also what TRL's trainers take as `peft_config`)."""
    from peft import LoraConfig

    from gapo.errors import ModelError

    present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise ModelError(f"models.lora.target_modules {list(cfg.target_modules)}: none is a linear layer of this "
                         f"policy (its linear layers: {', '.join(sorted(present)) or 'none'})")
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def add_lora(model, cfg: LoRAConfig):
    """Inject LoRA into `model` (in place) and return it; the base weights are frozen."""
    from peft import get_peft_model

    wrapped = get_peft_model(model, lora_config(model, cfg))
    inner = wrapped.base_model.model
    # PEFT leaves lm_head/embeddings frozen, and so do we: the adapter is the whole trainable state.
    return inner


@contextlib.contextmanager
def adapters_disabled(model):
    model = getattr(model, "module", model)
    layers = [m for _, m in _lora_layers(model)]
    # enable_adapters(False) also clears requires_grad on the adapters; remember and restore it.
    grads = [[p.requires_grad for p in m.parameters()] for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m, g in zip(layers, grads):
            m.enable_adapters(True)
            for p, rg in zip(m.parameters(), g):
                p.requires_grad_(rg)


class AdapterOff:
    """The base model under a LoRA-wrapped policy, called like a module: the frozen reference, no second copy."""

    def __init__(self, model):
        self.module = getattr(model, "module", model)

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), adapters_disabled(self.module):
            return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def eval(self):
        return self


@torch.no_grad()
def merged_state_dict(model) -> dict:
    """The policy as plain weights: every LoRA layer's base weight plus its delta, keys as in the base model."""
    model = getattr(model, "module", model)
    deltas = {name: m.get_delta_weight(ADAPTER) for name, m in _lora_layers(model) if ADAPTER in m.lora_A}
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    for name, delta in deltas.items():
        key = f"{name}.weight"
        out[key] = out[key] + delta.to(out[key].dtype)
    return out


def adapter_state_dict(model) -> dict:
    model = getattr(model, "module", model)
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}
