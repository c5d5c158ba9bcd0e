"""Split rules: what the test split holds back so that copying SFT templates is not enough.

- **Unseen categories**: `data.held_out_categories` categories (a seeded choice) appear only in test.
- **Unseen constraint combinations**: a seeded ~12% of the compatible instruction pairs are banned from train and
  validation; every test prompt from a seen category contains at least one of them. So no test prompt shares
  its (category, set of instruction ids) with any training prompt.
- **Unseen numeric values**: each numeric argument has held-out values (constraints.VALUE_POOLS[...].held_out,
  e.g. 5 bullets, 4 highlights, "less than 65/85/105/125 words"). Train and validation never use them, not
  even in perturbed (rejected) prompts; test prompts take one with probability 0.5 per numeric argument.

Validation is in-distribution: seen categories, training pairs and values, products disjoint from train.
"""
from __future__ import annotations

from dataclasses import dataclass

from gapo.data import catalog
from gapo.data import constraints as C
from gapo.data.corpus import seeded_rng

HELD_OUT_PAIR_FRACTION = 0.12
TEST_HELD_OUT_VALUE_PROB = 0.5


@dataclass(frozen=True)
class SplitPlan:
    held_out_categories: tuple[str, ...]
    seen_categories: tuple[str, ...]
    held_out_pairs: tuple[tuple[str, str], ...]

    @property
    def train_policy(self) -> C.SamplingPolicy:
        return C.SamplingPolicy(banned_pairs=frozenset(frozenset(p) for p in self.held_out_pairs),
                                held_out_prob=0.0)

    @property
    def test_policy(self) -> C.SamplingPolicy:
        return C.SamplingPolicy(banned_pairs=frozenset(), held_out_prob=TEST_HELD_OUT_VALUE_PROB)

    def to_json(self) -> dict:
        return {"held_out_categories": list(self.held_out_categories),
                "held_out_pairs": [list(p) for p in self.held_out_pairs],
                "held_out_values": {f"{iid}|{rel or '-'}": list(pool.held_out)
                                    for (iid, rel), pool in sorted(C.VALUE_POOLS.items(), key=lambda x: str(x[0]))}}


def make_split_plan(seed: int, held_out_categories: int) -> SplitPlan:
    names = [c.name for c in catalog.CATEGORIES]
    if held_out_categories >= len(names):
        raise ValueError(f"held_out_categories={held_out_categories} leaves no category for training "
                         f"(the catalogue has {len(names)})")
    rng = seeded_rng(seed, "split-categories")
    shuffled = list(names)
    rng.shuffle(shuffled)
    held = tuple(sorted(shuffled[:held_out_categories]))
    seen = tuple(n for n in names if n not in held)

    pairs = C.compatible_pairs()
    rng = seeded_rng(seed, "split-pairs")
    n_hold = max(1, round(HELD_OUT_PAIR_FRACTION * len(pairs)))
    # Every instruction must keep most of its partners in training; resample rather than starve one.
    for _ in range(100):
        held_pairs = rng.sample(pairs, n_hold)
        banned = {frozenset(p) for p in held_pairs}
        if all(sum(1 for p in pairs if iid in p and frozenset(p) not in banned) >= 4 for iid in C.INSTRUCTION_IDS):
            break
    return SplitPlan(held, seen, tuple(sorted(tuple(p) for p in held_pairs)))


def is_validation(seed: int, pid: str, fraction: float) -> bool:
    return seeded_rng(seed, "validation", pid).random() < fraction
