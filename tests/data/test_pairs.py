"""Every generated record, re-checked with lm-eval's IFEval checkers alone (gapo.data.constraints.check_response)."""
from __future__ import annotations

import collections

import pytest
from tests.data.data_helpers import records

from gapo.data import constraints as C
from gapo.data import schema


def test_every_chosen_prompt_satisfied_and_every_rejected_violated(prepared):
    ws, _ = prepared
    pp = records(ws, "pp")
    assert len(pp) > 250
    for r in pp:
        ok, per = C.check_response(r["response"], r["chosen_instruction_id_list"], r["chosen_kwargs"],
                                   r["chosen_prompt"])
        assert ok, (r["key"], per)
        ok, per = C.check_response(r["response"], r["rejected_instruction_id_list"], r["rejected_kwargs"],
                                   r["rejected_prompt"])
        assert not ok, r["key"]
        # The failing instruction is the perturbed one (or the sibling that replaced it).
        failed = [i for i, v in zip(r["rejected_instruction_id_list"], per) if not v]
        assert len(failed) >= 1
        if r["perturbation"] == "insert":
            assert r["perturbed_instruction_id"] in failed
            assert r["perturbed_instruction_id"] not in r["chosen_instruction_id_list"]
            assert len(r["rejected_instruction_id_list"]) == len(r["chosen_instruction_id_list"]) + 1
        else:
            assert len(r["rejected_instruction_id_list"]) == len(r["chosen_instruction_id_list"])
            assert r["perturbed_instruction_id"] in r["chosen_instruction_id_list"]


def test_pp_prompts_differ_only_in_requirements(prepared):
    ws, _ = prepared
    for r in records(ws, "pp", "train"):
        head_c, req_c = r["chosen_prompt"].split("\nRequirements:\n")
        head_r, req_r = r["rejected_prompt"].split("\nRequirements:\n")
        assert head_c == head_r and req_c != req_r
        assert req_r.split("\n") == [" ".join(C.describe(i, k).split())
                                     for i, k in zip(r["rejected_instruction_id_list"], r["rejected_kwargs"])]


def test_every_perturbation_kind_of_every_constraint_type_occurs(prepared):
    ws, _ = prepared
    seen = collections.Counter((r["perturbation"], r["perturbed_instruction_id"]) for r in records(ws, "pp", "train"))
    missing = [(k, i) for k in ("modify", "insert") for i in C.INSTRUCTION_IDS if not seen[(k, i)]]
    assert missing == []


def test_rm_view_labels_agree_with_the_checker(prepared):
    ws, _ = prepared
    rm, pp = records(ws, "rm"), records(ws, "pp")
    assert len(rm) == 2 * len(pp)
    assert collections.Counter(r["label"] for r in rm) == {1: len(pp), 0: len(pp)}
    for r in rm[:200]:
        ok, _ = C.check_response(r["response"], r["instruction_id_list"], r["kwargs"], r["prompt"])
        assert ok == bool(r["label"])


def test_pr_rejected_breaks_exactly_the_named_constraint(prepared):
    ws, _ = prepared
    pr = records(ws, "pr")
    assert len(pr) > 250
    broken = collections.Counter()
    for r in pr:
        ok, _ = C.check_response(r["chosen"], r["instruction_id_list"], r["kwargs"], r["prompt"])
        assert ok
        ok, per = C.check_response(r["rejected"], r["instruction_id_list"], r["kwargs"], r["prompt"])
        assert not ok and per.count(False) == 1
        assert r["instruction_id_list"][per.index(False)] == r["broken_instruction_id"]
        broken[r["broken_instruction_id"]] += 1
    assert len(broken) == len(C.INSTRUCTION_IDS)


def test_sft_completions_satisfy_their_prompts(prepared):
    ws, _ = prepared
    sft, ifeval = records(ws, "sft"), records(ws, "ifeval")
    assert [r["key"] for r in sft] == [r["key"] for r in ifeval]
    for s, e in zip(sft, ifeval):
        assert s["prompt"] == e["prompt"] and s["instruction_id_list"] == e["instruction_id_list"]
        assert C.check_response(s["completion"], s["instruction_id_list"], s["kwargs"])[0]


@pytest.mark.parametrize("kind", schema.KINDS)
def test_records_follow_the_schema_and_carry_ifeval_constraints(prepared, kind):
    ws, _ = prepared
    rows = records(ws, kind)
    assert rows
    for r in rows:
        assert set(r) == set(schema.FIELDS[kind])
        schema.validate_record(kind, r)
        for _, kwargs_field in schema.CONSTRAINT_FIELDS[kind]:
            assert all(None not in kw.values() for kw in r[kwargs_field])
    keys = [r["key"] for r in rows]
    if kind != "rm":
        assert len(set(keys)) == len(keys)
