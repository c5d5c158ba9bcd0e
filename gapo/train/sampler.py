"""Batched, KV-cached sampling from the policy: our own loop over `model.forward(past_key_values=...)`.

API
- `left_pad(prompts, pad_id)` -> (input_ids, attention_mask)        list of id lists -> left-padded tensors
- `position_ids_from_mask(attention_mask)` -> LongTensor          positions that skip left padding
- `sample(model, prompts, max_new_tokens, eos_token_id, pad_token_id, *, greedy=False, temperature=1.0,
          top_p=1.0, top_k=0, generator=None, sync_ranks=False)` -> `Samples`
- `sample_naive(...)`  same arguments and output, no KV cache: full forward each step (benchmarks, tests)
- `Samples`: `sequences` [B, P+N] (left-padded prompt + response, pad after a row's EOS),
  `attention_mask` [B, P+N] (1 on real prompt tokens and response tokens up to and including EOS),
  `action_mask` [B, N] (bool, response tokens up to and including EOS), `prompt_len` P, `response_ids` property.
- `logits_to_next_token(logits, greedy, temperature, top_p, top_k, generator)` -> LongTensor [B]

Forward passes that score these sequences (PPO log-probs, values) must use `position_ids_from_mask(attention_mask)`
as the sampler does, so a left-padded row gets the same positions as the same prompt unpadded. A row stops at its
first id in `eos_token_id` (int or list); the loop ends when every row has stopped or after `max_new_tokens`.
`sync_ranks=True` keeps every rank stepping until all ranks are done (needed under ZeRO-3, where each forward
is a collective). Greedy output equals HF `generate(do_sample=False)` (tests/train/test_sampler.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

IdList = Sequence[int]


@dataclass
class Samples:
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_len: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.action_mask.sum(dim=1)


def left_pad(prompts: Sequence[IdList], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0,1,2,... over the real tokens of each row; padding gets 1 (any value works, it is masked)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def logits_to_next_token(logits: torch.Tensor, greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                         top_k: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token per row from last-position logits [B, V]: argmax, or a sample after temperature, top-k, top-p."""
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass BEFORE it already reaches top_p: the top token always survives.
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_set(eos: Union[int, Sequence[int]]) -> list[int]:
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _all_ranks_done(local_done: bool, sync_ranks: bool, device) -> bool:
    if not sync_ranks:
        return local_done
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_done
    flag = torch.tensor([0 if local_done else 1], device=device)
    dist.all_reduce(flag)  # sum of "still running" over ranks
    return int(flag.item()) == 0


def _cache_kwarg(module) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name warns); remote-code models may not."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _keep_last(module) -> dict:
    # Only the last position's logits are needed: skips a [B, P, V] projection in the prefill.
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(module.forward).parameters else {}


def _finish(prompt_ids, prompt_mask, tokens: list[torch.Tensor], alive_steps: list[torch.Tensor], pad_id: int) -> Samples:
    B, P = prompt_ids.shape
    if tokens:
        resp = torch.stack(tokens, dim=1)
        act = torch.stack(alive_steps, dim=1)
    else:
        resp = prompt_ids.new_empty((B, 0))
        act = torch.zeros((B, 0), dtype=torch.bool, device=prompt_ids.device)
    resp = resp.masked_fill(~act, pad_id)
    return Samples(sequences=torch.cat([prompt_ids, resp], dim=1),
                   attention_mask=torch.cat([prompt_mask, act.long()], dim=1),
                   action_mask=act, prompt_len=P)


@torch.no_grad()
def sample(model, prompts: Sequence[IdList], max_new_tokens: int, eos_token_id: Union[int, Sequence[int]],
           pad_token_id: int, *, greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           generator: Optional[torch.Generator] = None, sync_ranks: bool = False) -> Samples:
    """KV-cached batched sampling. `model` is an HF causal LM (or a DeepSpeed engine around one)."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    try:
        ids, mask = left_pad(prompts, pad_token_id, device)
        stops = torch.tensor(_as_set(eos_token_id), device=device)
        B = ids.size(0)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        tokens, alive_steps = [], []
        cache_kw, keep = _cache_kwarg(module), _keep_last(module)
        out = module(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
                     **keep)
        past = _out_cache(out)
        logits = out.logits[:, -1, :]
        next_pos = mask.sum(-1, keepdim=True)  # position of the first response token, per row
        full_mask = mask
        for step in range(max_new_tokens):
            nxt = logits_to_next_token(logits, greedy, temperature, top_p, top_k, generator)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_token_id))
            tokens.append(nxt)
            alive_steps.append(alive.clone())  # this token counts if the row was alive when it was emitted
            alive = alive & ~torch.isin(nxt, stops)
            if step == max_new_tokens - 1 or _all_ranks_done(not bool(alive.any()), sync_ranks, device):
                break
            # Finished rows keep stepping with a pad (their outputs are discarded); attending to it is harmless.
            full_mask = torch.cat([full_mask, torch.ones((B, 1), dtype=full_mask.dtype, device=device)], dim=1)
            out = module(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=next_pos,
                         use_cache=True, **{cache_kw: past}, **keep)
            past = _out_cache(out)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return _finish(ids, mask, tokens, alive_steps, pad_token_id)
    finally:
        module.train(was_training)


@torch.no_grad()
def sample_naive(model, prompts: Sequence[IdList], max_new_tokens: int, eos_token_id: Union[int, Sequence[int]],
                 pad_token_id: int, *, greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, generator: Optional[torch.Generator] = None, sync_ranks: bool = False) -> Samples:
    """Reference implementation without a KV cache: O(N^2) recomputation; same outputs as `sample`."""
    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    try:
        ids, mask = left_pad(prompts, pad_token_id, device)
        stops = torch.tensor(_as_set(eos_token_id), device=device)
        B = ids.size(0)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        seq, full_mask = ids, mask
        tokens, alive_steps = [], []
        for step in range(max_new_tokens):
            out = module(input_ids=seq, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask),
                         use_cache=False, **_keep_last(module))
            nxt = logits_to_next_token(out.logits[:, -1, :], greedy, temperature, top_p, top_k, generator)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_token_id))
            tokens.append(nxt)
            alive_steps.append(alive.clone())
            alive = alive & ~torch.isin(nxt, stops)
            if _all_ranks_done(not bool(alive.any()), sync_ranks, device):
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            full_mask = torch.cat([full_mask, torch.ones((B, 1), dtype=full_mask.dtype, device=device)], dim=1)
        return _finish(ids, mask, tokens, alive_steps, pad_token_id)
    finally:
        module.train(was_training)
