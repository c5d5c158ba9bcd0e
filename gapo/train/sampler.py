"""Batched, KV-cached sampling from the policy: our own loop over `model.forward(past_key_values=...)`.

API
- `left_pad(prompts, pad_id)` -> (input_ids, attention_mask)        list of id lists -> left-padded tensors
- `sample(model, prompts, max_new_tokens, eos_token_id, pad_token_id, *, greedy=False, temperature=1.0,
          top_p=1.0, top_k=0, generator=None, sync_ranks=False)` -> `Samples`
- `sample_naive(...)`  same arguments and output, no KV cache: full forward each step (benchmarks, tests)
- `Samples`: `sequences` [B, P+N] (left-padded prompt + response, pad after a row's EOS),
  `attention_mask` [B, P+N] (1 on real prompt tokens and response tokens up to and including EOS),
  `action_mask` [B, N] (bool, response tokens up to and including EOS), `prompt_len` P, `response_ids` property.
- `logits_to_next_token(logits, greedy, temperature, top_p, top_k, generator)` -> LongTensor [B]

Forward passes that score these sequences (PPO log-probs, values) must use `gapo.models.prompting.position_ids_from_mask`
as the sampler does, so a left-padded row gets the same positions as the same prompt unpadded. A row stops at its
first id in `eos_token_id` (int or list); the loop ends when every row has stopped or after `max_new_tokens`.
`sync_ranks=True` keeps every rank stepping until all ranks are done (needed under ZeRO-3, where each forward
is a collective). Greedy output equals HF `generate(do_sample=False)` (tests/train/test_sampler.py).

Speed (docs/benchmarks.md): for Llama-family policies the decode steps after HF's prefill run through
`_StaticLlamaDecoder` (K/V buffers allocated once, mask built once; `STATIC_CACHE = False` turns it off), and
sampling draws by inverting the CDF (`_sample_categorical`) instead of `torch.multinomial`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from gapo.models.prompting import position_ids_from_mask

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


def logits_to_next_token(logits: torch.Tensor, greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                         top_k: int = 0, generator: Optional[torch.Generator] = None,
                         rows: Optional[torch.Tensor] = None, batch: int = 0) -> torch.Tensor:
    """Next token per row from last-position logits [B, V]: argmax, or a sample after temperature, top-k, top-p.
    `rows`/`batch`: the logits are rows `rows` of a batch of `batch` (finished rows dropped): the random draw is
    still made for the whole batch, so a seeded generator gives every row the same token as without dropping."""
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
    return _sample_categorical(logits.softmax(-1), generator, rows, batch)


def _sample_categorical(probs: torch.Tensor, generator: Optional[torch.Generator] = None,
                        rows: Optional[torch.Tensor] = None, batch: int = 0) -> torch.Tensor:
    """One draw per row from `probs` [B, V] by inverting the CDF: the first index whose cumulative mass exceeds
    u·total, u ~ U[0, 1). Same distribution as `torch.multinomial(probs, 1)` but ~10x cheaper on CPU (multinomial
    was 4.6 ms of a 35 ms decode step at 16×4096; this is 0.3 ms: benchmarks/rollout.py). The CDF is accumulated in
    float64 so small probabilities are not biased by rounding; v is kept strictly below the total, so the chosen
    index always has positive mass (a token masked by top-k/top-p can never be drawn)."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    if rows is None:
        u = torch.rand(total.shape, dtype=torch.float64, device=probs.device, generator=generator)
    else:
        u = torch.rand((batch, 1), dtype=torch.float64, device=probs.device, generator=generator)[rows]
    v = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, v, right=True).squeeze(-1)


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


class _StaticLlamaDecoder:
    """Decode steps of a Llama-family causal LM with a preallocated (static) KV cache and a mask built once.

    The prefill is HF's own forward; each following step runs the same modules (embedding, RMSNorms, q/k/v/o
    projections, MLP, lm_head) and HF's rotary embedding, but writes K/V into buffers allocated once for P+N
    positions and attends to a slice of them with a boolean mask sliced from one [B, P+N] tensor. This removes, per
    step, the DynamicCache's torch.cat of every layer's K and V (O(L) copies per step), HF's mask construction and
    the attention-mask torch.cat: docs/benchmarks.md has the before/after. Same math and the same SDPA kernel as
    HF's "sdpa" attention, so greedy output equals HF generate (tests/train/test_sampler.py).
    Used only for a plain (non-ZeRO-3-partitioned) `model_type == "llama"` module; anything else takes the generic
    path in `sample`.
    """

    def __init__(self, module, prefill_cache, prompt_mask: torch.Tensor, max_new_tokens: int):
        self.module, self.inner = module, module.model
        cfg = module.config
        self.layers = list(self.inner.layers[: cfg.num_hidden_layers])
        B, P = prompt_mask.shape
        self.P, self.B = P, B
        total = P + max_new_tokens
        mask = torch.ones((B, total), dtype=torch.bool, device=prompt_mask.device)
        mask[:, :P] = prompt_mask.bool()
        self.mask = mask[:, None, None, :]  # [B, 1, 1, P+N]: finished rows keep attending to their pads (harmless)
        self.k, self.v = [], []
        for i, layer in enumerate(prefill_cache.layers[: len(self.layers)]):
            k, v = layer.keys, layer.values  # [B, kv_heads, P, head_dim]
            kb = k.new_empty((B, k.size(1), total, k.size(3)))
            vb = v.new_empty((B, v.size(1), total, v.size(3)))
            kb[:, :, :P] = k
            vb[:, :, :P] = v
            self.k.append(kb)
            self.v.append(vb)

    def keep(self, idx: torch.Tensor) -> None:
        """Drop finished rows: keep rows `idx` (of the current batch) in the K/V buffers and the mask. A step then
        costs what the rows still decoding cost; HF `generate` steps every row until the longest one ends."""
        self.k = [k.index_select(0, idx) for k in self.k]
        self.v = [v.index_select(0, idx) for v in self.v]
        self.mask = self.mask.index_select(0, idx)
        self.B = idx.numel()

    @staticmethod
    def supports(module) -> bool:
        cfg = getattr(module, "config", None)
        inner = getattr(module, "model", None)
        if cfg is None or inner is None or getattr(cfg, "model_type", None) != "llama":
            return False
        if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return False
        if not all(hasattr(inner, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm")):
            return False
        # ZeRO-3 partitions parameters and gathers them in module hooks around the full forward: keep HF's path.
        return not any(hasattr(p, "ds_id") for p in module.parameters())

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin  # HF's apply_rotary_pos_emb

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor, t: int) -> torch.Tensor:
        """Logits [B, V] after feeding `tokens` [B] at cache slot `t` (= P + step) and positions [B, 1]."""
        import torch.nn.functional as F

        B = self.B
        h = self.inner.embed_tokens(tokens[:, None])
        cos, sin = self.inner.rotary_emb(h, position_ids=position_ids)
        cos, sin = cos[:, None], sin[:, None]
        mask = self.mask[..., : t + 1]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            hd = attn.head_dim
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(B, 1, -1, hd).transpose(1, 2)
            k = attn.k_proj(x).view(B, 1, -1, hd).transpose(1, 2)
            v = attn.v_proj(x).view(B, 1, -1, hd).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            self.k[i][:, :, t: t + 1] = k
            self.v[i][:, :, t: t + 1] = v
            K, V = self.k[i][:, :, : t + 1], self.v[i][:, :, : t + 1]
            # GQA with one query token: the query heads sharing a K/V head become that head's query rows
            # [B, kv_heads, groups, hd] (HF's pack_gqa), instead of repeating K/V `groups` times per step, a copy
            # of the whole cache that made this path 1.7x slower than HF's on SmolLM2 (docs/benchmarks.md).
            q = q.reshape(B, K.size(1), -1, hd)
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=attn.scaling)
            h = h + attn.o_proj(o.reshape(B, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.module.lm_head(self.inner.norm(h))[:, -1, :]


def bf16_decoder(model, state: Optional[dict] = None, into=None):
    """A bfloat16 copy of `model` (an HF causal LM, float32) to decode with, or `into` refreshed in place.

    Decoding multiplies a few rows by every weight at each step, so under torch.autocast all weights would be
    re-cast to bf16 per generated token; the copy casts them once (per episode in PPO, once in evaluation).
    `state` overrides the weights (a LoRA policy's merged state dict). Built on the meta device: no random init."""
    state = model.state_dict() if state is None else state
    if into is None:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            into = AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16)
        into.load_state_dict({k: v.detach().to(torch.bfloat16) for k, v in state.items()}, strict=False, assign=True)
        into.tie_weights()
        source = dict(model.named_buffers())
        for name, buf in list(into.named_buffers()):
            if buf.is_meta:  # non-persistent buffers (rotary inv_freq) are not in a state dict: copied as they are
                owner, _, attr = name.rpartition(".")
                (into.get_submodule(owner) if owner else into)._buffers[attr] = source[name].detach().clone()
        into = into.eval().to(next(model.parameters()).device)
    else:
        into.load_state_dict(state, strict=False)
    missing = [n for n, p in into.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"bf16_decoder: weights missing from the state dict: {missing[:3]}")
    return into


# Set False to force HF's forward + DynamicCache in `sample` (benchmarks/rollout.py measures both).
STATIC_CACHE = True


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
        B, P = ids.shape
        alive = torch.ones(B, dtype=torch.bool, device=device)
        tokens, alive_steps = [], []
        cache_kw, keep = _cache_kwarg(module), _keep_last(module)
        out = module(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
                     **keep)
        past = _out_cache(out)
        logits = out.logits[:, -1, :]
        fast = (_StaticLlamaDecoder(module, past, mask, max_new_tokens)
                if STATIC_CACHE and max_new_tokens > 1 and _StaticLlamaDecoder.supports(module)
                and hasattr(past, "layers") else None)
        next_pos = mask.sum(-1, keepdim=True)  # position of the first response token, per row
        # The mask for all P+N positions, built once; step k attends to its first P+k+1 columns.
        full_mask = torch.cat([mask, torch.ones((B, max_new_tokens), dtype=mask.dtype, device=device)], dim=1)
        rows = None  # the static path drops finished rows: `rows` are the batch rows `logits` belong to
        for step in range(max_new_tokens):
            if rows is None:
                nxt = logits_to_next_token(logits, greedy, temperature, top_p, top_k, generator)
            else:
                nxt = torch.full((B,), pad_token_id, dtype=torch.long, device=device)
                nxt[rows] = logits_to_next_token(logits, greedy, temperature, top_p, top_k, generator, rows, B)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_token_id))
            tokens.append(nxt)
            alive_steps.append(alive.clone())  # this token counts if the row was alive when it was emitted
            alive = alive & ~torch.isin(nxt, stops)
            if step == max_new_tokens - 1 or _all_ranks_done(not bool(alive.any()), sync_ranks, device):
                break
            # Finished rows keep stepping with a pad (their outputs are discarded); attending to it is harmless.
            if fast is not None:
                current = rows if rows is not None else torch.arange(B, device=device)
                if int(alive.sum()) <= 0.75 * current.numel():  # compact once a quarter has finished
                    local = alive[current].nonzero().squeeze(-1)
                    fast.keep(local)
                    rows = current[local]
                logits = (fast.step(nxt, next_pos, P + step) if rows is None
                          else fast.step(nxt[rows], next_pos[rows], P + step))
            else:
                out = module(input_ids=nxt[:, None], attention_mask=full_mask[:, : P + step + 1],
                             position_ids=next_pos, use_cache=True, **{cache_kw: past}, **keep)
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
