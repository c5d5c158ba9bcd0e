"""Record builders: one verified reference per prompt, then the SFT, preferential-prompt (PP), reward-model (RM),
preferential-response (PR) and IFEval records built from it. Field lists are in docs/architecture.md and
gapo.data.schema; every record carries its constraints in IFEval form so the IFEval checkers alone can re-check it.

Nothing is trusted by construction: a reference is kept only if the checker passes every constraint, a PP pair
only if the checker fails the perturbed constraint on the same response, a PR pair only if the rejected response
fails the broken constraint and passes all the others.

`build_example` is a pure function of its `Job` (all randomness is keyed by seed and key), so prepare can run
jobs in any order or in several processes and still write the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from gapo.data import constraints as C
from gapo.data import perturbations as P
from gapo.data import writer as W
from gapo.data.corpus import CATEGORY_BY_NAME, Product, format_prompt, make_product, seeded_rng

REFERENCE_ATTEMPTS = 3


@dataclass(frozen=True)
class Job:
    """One prompt to generate: everything needed, nothing shared."""

    seed: int
    key: int
    split: str
    pid: str
    category: str
    num_constraints: int
    policy: C.SamplingPolicy
    seed_ids: tuple[str, ...] = ()
    train_values_only: bool = True   # perturbations may not use held-out numbers


@dataclass
class Reference:
    key: int
    split: str
    product: Product
    constraints: list[C.Constraint]
    instruction_index: int
    prompt: str
    response: str
    seed: str


@dataclass
class Example:
    """What one job produced: the records, and counters for data/stats.json."""

    key: int
    split: str
    sft: Optional[dict] = None
    ifeval: Optional[dict] = None
    pp: Optional[dict] = None
    rm: list[dict] = field(default_factory=list)
    pr: Optional[dict] = None
    counts: dict = field(default_factory=dict)


def prompt_for(product: Product, constraints: Sequence[C.Constraint], instruction_index: int) -> str:
    return format_prompt(product, [c.describe() for c in constraints], instruction_index)


def make_reference(job: Job, counts: dict) -> Optional[Reference]:
    product = make_product(job.seed, job.pid, CATEGORY_BY_NAME[job.category])
    rng = seeded_rng(job.seed, "constraints", job.key)
    cons = C.sample_constraints(product, rng, job.num_constraints, job.policy, job.seed_ids)
    if cons is None:
        counts["sampling_failed"] = counts.get("sampling_failed", 0) + 1
        return None
    instruction_index = rng.randrange(4)
    prompt = prompt_for(product, cons, instruction_index)
    budget = W.max_words_for(prompt, cons)
    for attempt in range(REFERENCE_ATTEMPTS):
        seed = f"{job.seed}:{job.key}:{attempt}"
        text = W.write_reference(product, cons, seed, budget)
        if text is None:
            counts["writer_gave_up"] = counts.get("writer_gave_up", 0) + 1
            continue
        if not C.all_pass(cons, text):
            # The writer thought it was done; the checker disagrees. Dropped, counted, retried.
            counts["reference_failed_check"] = counts.get("reference_failed_check", 0) + 1
            continue
        return Reference(job.key, job.split, product, cons, instruction_index, prompt, text, seed)
    counts["prompt_dropped"] = counts.get("prompt_dropped", 0) + 1
    return None


def _ifeval_fields(constraints: Sequence[C.Constraint], prefix: str = "") -> dict:
    ids, kwargs = C.to_ifeval(constraints)
    return {f"{prefix}instruction_id_list": ids, f"{prefix}kwargs": kwargs}


def sft_record(ref: Reference) -> dict:
    return {"key": ref.key, "category": ref.product.category, "prompt": ref.prompt, "completion": ref.response,
            **_ifeval_fields(ref.constraints)}


def ifeval_record(ref: Reference) -> dict:
    return {"key": ref.key, "category": ref.product.category, "prompt": ref.prompt, **_ifeval_fields(ref.constraints)}


def _rotation(key: int) -> list[str]:
    # Which instruction to perturb first rotates with the key, so every (kind, instruction) occurs even in a
    # few hundred pairs, without any state shared between jobs.
    ids = list(C.INSTRUCTION_IDS)
    start = key % len(ids)
    return ids[start:] + ids[:start]


def build_pp(ref: Reference, train_values_only: bool) -> Optional[dict]:
    """A preferential-prompt pair: same response, chosen prompt satisfied, rejected prompt violated."""
    rng = seeded_rng(ref.seed, "pp")
    allow = P.no_held_out if train_values_only else P.allow_all
    pert = P.Perturber(ref.response, C.keyword_vocab(ref.product), rng, allow)
    order = _rotation(ref.key // 2)
    kinds = ["modify", "insert"] if rng.random() < 0.5 else ["insert", "modify"]
    cons = ref.constraints
    for kind in kinds:
        if kind == "modify":
            for j in sorted(range(len(cons)), key=lambda i: order.index(cons[i].iid)):
                new = P.modify(cons, j, pert)
                if new is not None:
                    rejected = cons[:j] + [new] + cons[j + 1:]
                    return _pp_record(ref, rejected, "modify", cons[j].iid)
        else:
            for iid in order:
                new = P.insert(cons, iid, pert)
                if new is not None:
                    pos = rng.randrange(len(cons) + 1)
                    rejected = cons[:pos] + [new] + cons[pos:]
                    return _pp_record(ref, rejected, "insert", iid)
    return None


def _pp_record(ref: Reference, rejected: list[C.Constraint], kind: str, perturbed: str) -> dict:
    return {"key": ref.key, "category": ref.product.category, "response": ref.response,
            "chosen_prompt": ref.prompt, "rejected_prompt": prompt_for(ref.product, rejected, ref.instruction_index),
            "perturbation": kind, "perturbed_instruction_id": perturbed,
            **_ifeval_fields(ref.constraints, "chosen_"), **_ifeval_fields(rejected, "rejected_")}


def rm_records(pp: dict) -> list[dict]:
    """The classification view of a PP pair: (prompt, response) -> 1 for the chosen prompt, 0 for the rejected."""
    return [
        {"key": pp["key"], "prompt": pp["chosen_prompt"], "response": pp["response"], "label": 1,
         "instruction_id_list": pp["chosen_instruction_id_list"], "kwargs": pp["chosen_kwargs"]},
        {"key": pp["key"], "prompt": pp["rejected_prompt"], "response": pp["response"], "label": 0,
         "instruction_id_list": pp["rejected_instruction_id_list"], "kwargs": pp["rejected_kwargs"]},
    ]


def build_pr(ref: Reference) -> Optional[dict]:
    """A preferential-response pair: the reference, and a rewrite of it that breaks exactly one constraint."""
    cons = ref.constraints
    order = _rotation(ref.key // 2 + 7)
    for j in sorted(range(len(cons)), key=lambda i: order.index(cons[i].iid)):
        plan = W.plan_breaking(cons, j, seeded_rng(ref.seed, "pr", j))
        # Same seed as the reference: the rewrite keeps its sentences wherever the plan allows.
        text = W.write_with_plan(ref.product, plan, ref.seed, W.max_words_for(ref.prompt, cons))
        if text is None or text == ref.response:
            continue
        if cons[j].check(text) or not C.all_pass([c for i, c in enumerate(cons) if i != j], text):
            continue
        return {"key": ref.key, "category": ref.product.category, "prompt": ref.prompt, "chosen": ref.response,
                "rejected": text, "broken_instruction_id": cons[j].iid, **_ifeval_fields(cons)}
    return None


def build_example(job: Job) -> Example:
    ex = Example(job.key, job.split)
    ref = make_reference(job, ex.counts)
    if ref is None:
        return ex
    ex.sft = sft_record(ref)
    ex.ifeval = ifeval_record(ref)
    ex.pp = build_pp(ref, job.train_values_only)
    if ex.pp is None:
        ex.counts["pp_failed"] = 1
    else:
        ex.rm = rm_records(ex.pp)
    ex.pr = build_pr(ref)
    if ex.pr is None:
        ex.counts["pr_failed"] = 1
    return ex
