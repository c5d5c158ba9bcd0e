"""Catalogue, products and the reference writer."""
from __future__ import annotations

import collections

from gapo.data import catalog
from gapo.data import constraints as C
from gapo.data import writer as W
from gapo.data.corpus import CATEGORY_BY_NAME, format_prompt, make_product

from tests.data.data_helpers import records


def test_catalogue_size_and_value_rules():
    catalog.check_table()
    assert len(catalog.CATEGORIES) >= 30
    assert len(catalog.distinct_attribute_values()) >= 2000
    assert len({c.name for c in catalog.CATEGORIES}) == len(catalog.CATEGORIES)


def test_products_are_seeded_by_id():
    cat = catalog.CATEGORIES[0]
    assert make_product(7, "p1", cat) == make_product(7, "p1", cat)
    assert make_product(7, "p1", cat) != make_product(8, "p1", cat)


def test_prompt_layout():
    p = make_product(1, "p9", CATEGORY_BY_NAME["backpacks"])
    cons = [C.Constraint(C.BULLETS, {"num_bullets": 3}), C.Constraint(C.NO_COMMA, {})]
    text = format_prompt(p, [c.describe() for c in cons], 0)
    lines = text.split("\n")
    assert lines[1] == f"Product: {p.name}" and "Requirements:" in lines
    req = lines[lines.index("Requirements:") + 1:]
    assert len(req) == 2 and req[0].startswith("Your answer must contain exactly 3 bullet points.")
    assert req[1] == cons[1].describe()


def test_reference_lengths_suit_a_small_model(prepared):
    ws, _ = prepared
    words = [len(r["completion"].split()) for r in records(ws, "sft")]
    assert 60 <= sorted(words)[len(words) // 2] <= 110
    assert sum(20 <= w <= 160 for w in words) / len(words) > 0.98
    pair = max(len(r["prompt"].split()) + len(r["completion"].split()) for r in records(ws, "sft"))
    assert pair <= 250


def test_references_vary():
    """Same constraints, different products: no two descriptions are the same text, few share an opener."""
    texts, openers = [], collections.Counter()
    for i in range(40):
        p = make_product(3, f"v{i}", catalog.CATEGORIES[i % len(catalog.CATEGORIES)])
        t = W.write_reference(p, [C.Constraint(C.NUMBER_WORDS, {"num_words": 60, "relation": "at least"})], f"s{i}")
        assert t is not None and C.check(C.NUMBER_WORDS, {"num_words": 60, "relation": "at least"}, t)
        texts.append(t)
        openers[" ".join(t.split()[:2])] += 1
    assert len(set(texts)) == 40
    assert openers.most_common(1)[0][1] <= 15


def test_breaking_plan_changes_only_the_broken_constraint():
    p = make_product(5, "b1", CATEGORY_BY_NAME["electric kettles"])
    cons = [C.Constraint(C.TITLE, {}), C.Constraint(C.NO_COMMA, {}), C.Constraint(C.HIGHLIGHTS, {"num_highlights": 2})]
    ref = W.write_reference(p, cons, "seed")
    assert ref and all(C.check_all(cons, ref))
    import random

    broken = W.write_with_plan(p, W.plan_breaking(cons, 0, random.Random(0)), "seed")
    assert broken is not None
    assert C.check_all(cons, broken) == [False, True, True]
    # Same seed: the rewrite keeps the reference's sentences, only the title line goes.
    assert broken.strip() == ref.split("\n", 1)[1].strip()
