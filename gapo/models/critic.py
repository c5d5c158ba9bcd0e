"""The PPO critic: a backbone plus a scalar value head on every token of the POLICY's sequence.

API
- `Critic(backbone, init, bridge=None)`; `critic(input_ids, attention_mask)` -> values [B, T] (float32), where
  `values[:, t]` estimates the value of the prefix `input_ids[:, :t+1]` (policy token ids, left padding allowed).
  It is an `nn.Module`: wrap it with `gapo.train.engine.build_train_engine` like any model.
- `build_critic(params, policy_dir, reward_dir, policy_tokenizer)` -> Critic   per `models.critic_init`
- `load_critic(dir, params, policy_tokenizer)`; gapo.train.engine.save_critic writes that dir (collective under
  ZeRO-3: saving is the training engine's business, and a building block does not import the trainers)
- `TokenBridge(policy_tokenizer, encoder_tokenizer, max_length)`: policy ids -> encoder ids + index map

`critic_init=policy` (default): the policy's decoder (`AutoModel` of the SFT checkpoint) + a new head. Same
tokenizer and causal attention as the actor, so values line up with actions one to one.

`critic_init=reward`: the encoder RM's backbone (as the GAPO code does with Longformer). Two problems must be
solved, not ignored: (1) the encoder has another tokenizer, so policy ids are decoded to text and re-tokenised;
(2) a value V(s_t) must depend only on the prefix s_t, but a bidirectional encoder lets every position see the
future: a critic that peeks at the tokens it is supposed to predict makes V a function of the action, and GAE
advantages stop being centred. We therefore
- run the encoder with a CAUSAL mask (`config.is_decoder=True`: BERT-style models then mask the future);
- map each policy position t to the last encoder token that lies entirely inside a COMPLETE word of the decoded
  prefix text (it ends before a whitespace that is itself inside the prefix). A word still being written is
  left out, because how a word-piece tokenizer splits "run" depends on whether "ning" follows: including it
  would leak the future. Positions before the first complete word map to [CLS] (encoder position 0);
- truncate the encoder sequence at its END (a start cut would shift with the total length, another leak);
  prefixes past `max_length` reuse the last kept token.
Values are therefore an exact function of the prefix (tests/models/test_critic.py changes the future and checks
that earlier values do not move), at the price of lagging by at most one word.
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

CRITIC_FILE = "critic.json"
HEAD_FILE = "value_head.safetensors"


class TokenBridge:
    """Policy token ids -> (encoder ids, encoder mask, index [B, T] of the encoder position for each policy prefix)."""

    def __init__(self, policy_tokenizer, encoder_tokenizer, max_length: int = 512):
        self.ptok, self.etok, self.max_length = policy_tokenizer, encoder_tokenizer, max_length
        self.ppad = policy_tokenizer.pad_token_id if policy_tokenizer.pad_token_id is not None else 0
        self.epad = encoder_tokenizer.pad_token_id if encoder_tokenizer.pad_token_id is not None else 0

    def _row(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """Encoder ids and, per policy token k, the encoder position summarising ids[:k+1]."""
        prefixes = self.ptok.batch_decode([ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False)
        full = prefixes[-1] if prefixes else ""
        enc = self.etok(full, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        eids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        special = set(self.etok.all_special_ids)
        real = [j for j, t in enumerate(eids) if t not in special and offsets[j][1] > offsets[j][0]]
        eids = eids[: self.max_length]
        real = [j for j in real if j < self.max_length]
        real_ends = [offsets[j][1] for j in real]
        # Boundary = index of a whitespace char; a prefix of length L makes every boundary c < L "complete".
        spaces = [c for c, ch in enumerate(full) if ch.isspace()]
        index = []
        for text in prefixes:
            # A prefix ending in the middle of a multi-byte character decodes to U+FFFD: count only the chars it
            # shares with the full text.
            L = len(text)
            while L > 0 and (L > len(full) or text[L - 1] != full[L - 1]):
                L -= 1
            b = bisect.bisect_left(spaces, L) - 1  # last whitespace strictly inside the prefix
            cut = spaces[b] if b >= 0 else 0
            n = bisect.bisect_right(real_ends, cut)  # encoder tokens ending at or before the boundary
            index.append(real[n - 1] if n > 0 else 0)
        return eids, index

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        B, T = input_ids.shape
        rows, maps = [], []
        for b in range(B):
            pos = attention_mask[b].nonzero().flatten().tolist()
            eids, idx = self._row(input_ids[b, pos].tolist())
            full_idx = [0] * T
            for p, j in zip(pos, idx):
                full_idx[p] = j
            rows.append(eids)
            maps.append(full_idx)
        L = max(len(r) for r in rows)
        ids = torch.full((B, L), self.epad, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        return ids, mask, torch.tensor(maps, dtype=torch.long)


class Critic(nn.Module):
    def __init__(self, backbone: nn.Module, init: str, bridge: Optional[TokenBridge] = None):
        super().__init__()
        if init not in ("policy", "reward"):
            raise ValueError(f"critic init must be 'policy' or 'reward', got {init!r}")
        if init == "reward" and bridge is None:
            raise ValueError("an encoder-initialised critic needs a TokenBridge (policy and encoder tokenizers)")
        self.backbone, self.init, self.bridge = backbone, init, bridge
        hidden = backbone.config.hidden_size
        self.value_head = nn.Linear(hidden, 1, bias=False)
        # OpenRLHF's value-head init: small enough that initial values are ~0 and do not swamp the rewards.
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1))
        self.config = backbone.config  # DeepSpeed / HF utilities look for `.config`

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from gapo.models.prompting import position_ids_from_mask

        if self.init == "policy":
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids_from_mask(attention_mask), use_cache=False
                                   ).last_hidden_state
            return self.value_head(hidden).squeeze(-1).float()
        device = input_ids.device
        eids, emask, index = self.bridge(input_ids.cpu(), attention_mask.cpu())
        eids, emask, index = eids.to(device), emask.to(device), index.to(device)
        kwargs = {"input_ids": eids, "attention_mask": emask}
        if "token_type_ids" in getattr(self.bridge.etok, "model_input_names", []):
            kwargs["token_type_ids"] = torch.zeros_like(eids)
        hidden = self.backbone(**kwargs).last_hidden_state
        values = self.value_head(hidden).squeeze(-1).float()  # [B, L] encoder positions
        return values.gather(1, index)  # [B, T] policy positions


def _load_backbone(path, params, causal: bool):
    import warnings

    from transformers import AutoModel

    from gapo.models.loading import quiet_transformers, torch_dtype

    from transformers.utils import logging as hf_logging

    quiet_transformers()
    kwargs = {"is_decoder": True} if causal else {}
    level = hf_logging.get_verbosity()
    # The backbone is loaded out of a task model (LM head / classifier): the "unexpected keys" report is expected.
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            return AutoModel.from_pretrained(path, dtype=torch_dtype(params.models), local_files_only=True,
                                             trust_remote_code=params.models.trust_remote_code,
                                             use_safetensors=None if params.models.allow_pickle else True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def build_critic(params, policy_dir, reward_dir, policy_tokenizer) -> Critic:
    """New critic from the SFT policy (`critic_init=policy`) or the warm-up RM (`critic_init=reward`)."""
    from gapo.errors import ModelError
    from gapo.models.loading import check_model_dir, load_tokenizer, resolve_model_dir

    torch.manual_seed(params.seed + 2)
    if params.models.critic_init == "policy":
        path = resolve_model_dir(policy_dir, "critic (policy init)", params.models)
        check_model_dir(path, "critic (policy init)", params.models)
        return Critic(_load_backbone(path, params, causal=False), "policy")
    path = resolve_model_dir(reward_dir, "critic (reward init)", params.models)
    check_model_dir(path, "critic (reward init)", params.models)
    backbone = _load_backbone(path, params, causal=True)
    if not getattr(backbone.config, "is_decoder", False):
        raise ModelError(f"critic (reward init) {str(path)!r}: {backbone.config.model_type} has no causal mode; "
                         "use models.critic_init=policy")
    etok = load_tokenizer(path, params.models, "critic (reward init)")
    max_len = min(getattr(backbone.config, "max_position_embeddings", 512), params.reward.max_length * 2)
    return Critic(backbone, "reward", TokenBridge(policy_tokenizer, etok, max_len))


def load_critic(path, params, policy_tokenizer) -> Critic:
    from safetensors.torch import load_file

    from gapo.errors import ModelError
    from gapo.models.loading import check_model_dir, load_tokenizer

    path = Path(path)
    if not (path / CRITIC_FILE).is_file() or not (path / HEAD_FILE).is_file():
        raise ModelError(f"critic {str(path)!r}: not a saved critic (expected {CRITIC_FILE} and {HEAD_FILE})")
    check_model_dir(path, "critic", params.models)
    info = json.loads((path / CRITIC_FILE).read_text(encoding="utf-8"))
    backbone = _load_backbone(path, params, causal=info["init"] == "reward")
    bridge = None
    if info["init"] == "reward":
        bridge = TokenBridge(policy_tokenizer, load_tokenizer(path, params.models, "critic"), info["max_length"])
    critic = Critic(backbone, info["init"], bridge)
    critic.value_head.load_state_dict(load_file(str(path / HEAD_FILE)))
    return critic
