"""Sample-and-decode: the one way the policy answers prompts, for PPO rollouts, GAPO's fakes, the per-round health
samples and evaluate's generations.

The batched KV-cached sampler (gapo.train.sampler) returns token tensors; every caller also needs the response
TEXT (the RM and the verifier read text, never the policy's ids: arXiv 2503.20194 §8 bug 5) and whether a row
stopped on a stop id rather than at the token budget (the missing-EOS penalty, `eos_rate`, evaluate's
`stopped`). `Generations` carries the three together, so "did this row stop" is computed in one place.

API
- `decode_threads(n)`                                   context: decode on `n` intra-op threads (0 = unchanged)
- `encode_prompts(rows, tokenizer, prompt_max_len)` -> id lists of the formatted prompts
- `Sampling` (max_new_tokens, greedy, temperature, top_p, top_k); `Sampling.from_ppo(ppo, greedy=False)`
- `sample_and_decode(decoder, prompt_ids, tokenizer, sampling, *, generator, sync_ranks, threads)` -> `Generations`
- `sample_rows(decoder, rows, tokenizer, params, *, greedy, generator)` -> `Generations` of one micro-batch of
  IFEval-format rows with PPO's sampling knobs (`ppo.*`, `runtime.decode_threads`, ranks kept in step)
- `sample_in_batches(decoder, rows, tokenizer, params, *, desc, greedy, generator)` yields (chunk, Generations)
  over micro-batches of `ppo.micro_rollout_batch_size`, with a progress bar
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Optional, Sequence

import torch

from gapo.config import Params
from gapo.runtime import bars_off
from gapo.train.sampler import Samples, sample


@contextlib.contextmanager
def decode_threads(n: int = 0):
    """Run token-by-token decoding on `n` intra-op threads (`runtime.decode_threads`; 0 = leave as is). A decode
    step of a tiny model multiplies a few rows by each weight (e.g. 16×256 by 256×1024): too small to split, so a
    second OpenMP thread only adds a barrier per op. Measured on the 2-core box under load with the 1.6 M toy:
    16×256×1024 linear 0.13 ms on 1 thread vs 16 ms on 2; 16 prompts × 128 tokens 3.2 s vs 72 s. SmolLM2's steps
    are matmul-bound and use both (docs/benchmarks.md)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(min(n, prev) if n > 0 else prev)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def encode_prompts(rows: Sequence[dict], tokenizer, prompt_max_len: int) -> list[list[int]]:
    from gapo.models.prompting import encode_prompt

    return [encode_prompt(r["prompt"], tokenizer, prompt_max_len) for r in rows]


@dataclass(frozen=True)
class Sampling:
    """How to decode: the sampler's knobs (greedy ignores the other three)."""

    max_new_tokens: int
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_ppo(cls, ppo, greedy: bool = False) -> "Sampling":
        return cls(ppo.generate_max_len, greedy, ppo.temperature, ppo.top_p, ppo.top_k)


@dataclass
class Generations:
    """One decoded batch: the sampler's tensors (`samples`), the response texts and the stop ids they were cut at."""

    samples: Samples
    texts: list[str]
    stop_ids: frozenset

    @cached_property
    def lengths(self) -> list[int]:
        """Response tokens per row, the stop id included (the action mask's length)."""
        return self.samples.response_lengths.long().tolist()

    @cached_property
    def stopped(self) -> list[bool]:
        """Did the row end on a stop id (rather than run out of `max_new_tokens`)? A row's last counted token is
        its first stop id, if it emitted one: the sampler stops counting a row there."""
        ids = self.samples.response_ids
        return [n > 0 and int(ids[i, n - 1]) in self.stop_ids for i, n in enumerate(self.lengths)]


def sample_and_decode(decoder, prompt_ids: Sequence[Sequence[int]], tokenizer, sampling: Sampling, *,
                      generator: Optional[torch.Generator] = None, sync_ranks: bool = False,
                      threads: Optional[int] = None) -> Generations:
    """Sample `decoder` on `prompt_ids` and decode each response (cut at the first stop id). `threads`: decode
    inside `decode_threads(threads)`; None leaves the thread count alone."""
    from gapo.models.prompting import decode_response, pad_token_id, stop_token_ids

    stops, pad = stop_token_ids(tokenizer), pad_token_id(tokenizer)
    with decode_threads(threads) if threads is not None else contextlib.nullcontext():
        s = sample(decoder, prompt_ids, sampling.max_new_tokens, stops, pad, greedy=sampling.greedy,
                   temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                   generator=generator, sync_ranks=sync_ranks)
    texts = [decode_response(ids, tokenizer, stops) for ids in s.response_ids.tolist()]
    return Generations(samples=s, texts=texts, stop_ids=frozenset(stops))


def sample_rows(decoder, rows: Sequence[dict], tokenizer, params: Params, *, greedy: bool = False,
                generator: Optional[torch.Generator] = None) -> Generations:
    """One micro-batch of IFEval-format `rows` answered with PPO's sampling knobs. Ranks step together
    (`sync_ranks`): under ZeRO-3 every forward is a collective."""
    ppo = params.ppo
    return sample_and_decode(decoder, encode_prompts(rows, tokenizer, ppo.prompt_max_len), tokenizer,
                             Sampling.from_ppo(ppo, greedy), generator=generator, sync_ranks=True,
                             threads=params.runtime.decode_threads)


def sample_in_batches(decoder, rows: Sequence[dict], tokenizer, params: Params, *, desc: str, greedy: bool = False,
                      generator: Optional[torch.Generator] = None,
                      bar: bool = True) -> Iterator[tuple[Sequence[dict], Generations]]:
    """(chunk, its Generations) for consecutive micro-batches of `ppo.micro_rollout_batch_size` rows."""
    from tqdm import tqdm

    from gapo.train import engine as E

    step = params.ppo.micro_rollout_batch_size
    for s in tqdm(range(0, len(rows), step), desc=desc, disable=not bar or bars_off(E.is_main()),
                  dynamic_ncols=True, leave=False):
        chunk = rows[s:s + step]
        yield chunk, sample_rows(decoder, chunk, tokenizer, params, greedy=greedy, generator=generator)
