"""Split rules: the test split holds unseen categories, instruction pairs and numbers; validation is in-distribution."""
from __future__ import annotations

import itertools

from tests.data.data_helpers import records

from gapo.data import constraints as C
from gapo.data import splits
from gapo.io import read_json


def _combos(rows):
    return {(r["category"], frozenset(r["instruction_id_list"])) for r in rows}


def test_test_split_shares_no_category_constraint_set_with_train(prepared):
    ws, _ = prepared
    train, test = records(ws, "ifeval", "train"), records(ws, "ifeval", "test")
    assert len(test) >= 70
    assert not _combos(test) & _combos(train)
    # Nor with any training pair of any kind.
    assert not _combos(test) & _combos(records(ws, "sft", "train"))


def test_unseen_categories_pairs_and_values(prepared):
    ws, _ = prepared
    stats = read_json(ws.data_stats)
    plan = stats["split_plan"]
    held_cats = set(plan["held_out_categories"])
    held_pairs = {frozenset(p) for p in plan["held_out_pairs"]}
    train_like = records(ws, "ifeval", "train") + records(ws, "ifeval", "validation")
    test = records(ws, "ifeval", "test")

    assert held_cats and not held_cats & {r["category"] for r in train_like}
    assert held_cats <= {r["category"] for r in test}

    def pairs_of(r):
        return {frozenset(p) for p in itertools.combinations(r["instruction_id_list"], 2)}

    assert all(not pairs_of(r) & held_pairs for r in train_like)
    seen_cat_test = [r for r in test if r["category"] not in held_cats]
    assert seen_cat_test and all(pairs_of(r) & held_pairs for r in seen_cat_test)

    def values(constraint_lists):
        out = set()
        for ids, kws in constraint_lists:
            for iid, kw in zip(ids, kws):
                c = C.Constraint(iid, kw)
                if iid in C.NUMBER_KWARG:
                    out.add((iid, c.relation(), c.number()))
        return out

    held_values = {(iid, rel, v) for (iid, rel), pool in C.VALUE_POOLS.items() for v in pool.held_out}
    train_sets = [(r["instruction_id_list"], r["kwargs"]) for r in train_like]
    for split in ("train", "validation"):
        for r in records(ws, "pp", split):   # perturbed prompts too: the RM never sees a held-out number
            train_sets.append((r["rejected_instruction_id_list"], r["rejected_kwargs"]))
    assert not values(train_sets) & held_values
    assert values((r["instruction_id_list"], r["kwargs"]) for r in test) & held_values


def test_split_plan_is_seeded_and_keeps_partners():
    a, b = splits.make_split_plan(1, 4), splits.make_split_plan(1, 4)
    assert a == b and a != splits.make_split_plan(2, 4)
    assert len(a.held_out_categories) == 4 and not set(a.held_out_categories) & set(a.seen_categories)
    banned = {frozenset(p) for p in a.held_out_pairs}
    for iid in C.INSTRUCTION_IDS:
        assert sum(1 for p in C.compatible_pairs() if iid in p and frozenset(p) not in banned) >= 4


def test_validation_is_in_distribution(prepared):
    ws, _ = prepared
    val = records(ws, "ifeval", "validation")
    held = set(read_json(ws.data_stats)["split_plan"]["held_out_categories"])
    assert val and not {r["category"] for r in val} & held
