"""gapo.compare.claims: the paper's orderings tested prompt by prompt (golden values computed by hand)."""
from __future__ import annotations

import pytest

from gapo.compare.claims import (build_claims, holm, paired_delta, per_prompt, pooled_cells, render_claims,
                               summarize, verdict)


def _row(key, strict, inst):
    return {"key": key, "follow_all_instructions_strict": strict, "follow_all_instructions_loose": strict,
            "follow_instruction_list_strict": inst, "follow_instruction_list_loose": inst}


def test_per_prompt_prompt_and_instruction_level():
    rows = [_row("a", True, [True, True]), _row("b", False, [True, False, False])]
    assert per_prompt(rows, "prompt_level_strict_acc") == {"a": (1, 1), "b": (0, 1)}
    assert per_prompt(rows, "inst_level_loose_acc") == {"a": (2, 2), "b": (1, 3)}
    with pytest.raises(ValueError, match="no per-prompt form"):
        per_prompt(rows, "rm_auc")


def test_paired_delta_one_seed_golden():
    a = {1: {"k1": (1, 1), "k2": (1, 1), "k3": (0, 1), "k4": (1, 1)}}
    b = {1: {"k1": (0, 1), "k2": (1, 1), "k3": (0, 1), "k4": (0, 1), "only_b": (1, 1)}}
    cell = paired_delta(a, b, resamples=2000, seed=0)
    # 4 shared prompts: A passes 3, B passes 1; discordant 2 (A only) vs 0; McNemar p = 2 * (1/2)^2 = 0.5
    assert cell["n_prompts"] == 4 and cell["n_pairs"] == 4 and cell["seeds"] == [1]
    assert cell["a_acc"] == 0.75 and cell["b_acc"] == 0.25 and cell["delta"] == 0.5
    assert (cell["a_only"], cell["b_only"]) == (2, 0) and cell["p_mcnemar"] == 0.5
    # every diff is 0 or +1 and half of them +1: P(all four resampled +1) = 1/16 > 2.5%, so the top is 1
    assert 0.0 <= cell["ci_low"] < 0.5 and cell["ci_high"] == 1.0


def test_paired_delta_keeps_a_prompts_seeds_together():
    # prompt x passes for A on both seeds and fails for B on both: one cluster with diff 2 and weight 2;
    # prompt y ties on both seeds. Every resample is a mix of the two clusters, so the statistic stays in [0, 1].
    a = {1: {"x": (1, 1), "y": (1, 1)}, 2: {"x": (1, 1), "y": (0, 1)}, 3: {"x": (1, 1)}}
    b = {1: {"x": (0, 1), "y": (1, 1)}, 2: {"x": (0, 1), "y": (0, 1)}}
    cell = paired_delta(a, b, resamples=500, seed=1)
    assert cell["seeds"] == [1, 2] and cell["n_prompts"] == 2 and cell["n_pairs"] == 4
    assert cell["delta"] == 0.5 and (cell["a_only"], cell["b_only"]) == (2, 0)
    assert cell["ci_low"] == 0.0 and cell["ci_high"] == 1.0


def test_paired_delta_instruction_level_weights_and_no_overlap():
    a = {1: {"p": (2, 3), "q": (1, 1)}}
    b = {1: {"p": (0, 3), "q": (1, 1)}}
    cell = paired_delta(a, b, resamples=200, mcnemar=False)
    assert cell["delta"] == pytest.approx(2 / 4) and "p_mcnemar" not in cell
    assert paired_delta({1: {"p": (1, 1)}}, {2: {"p": (1, 1)}}) is None
    with pytest.raises(ValueError, match="not the same test prompt"):
        paired_delta({1: {"p": (1, 2)}}, {1: {"p": (1, 3)}})


def test_equal_policies_give_p_one():
    runs = {1: {str(i): (i % 2, 1) for i in range(20)}}
    cell = paired_delta(runs, runs, resamples=300)
    assert cell["delta"] == 0.0 and cell["p"] == 1.0 and cell["p_mcnemar"] == 1.0


def test_holm_golden():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06; input order kept
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_verdict():
    assert verdict(0.1, 0.01, 0.05) == "holds"
    assert verdict(-0.1, 0.01, 0.05) == "reversed"
    assert verdict(0.3, 0.2, 0.05) == "inside the noise"


def _records_and_samples():
    keys = [f"k{i}" for i in range(30)]
    pattern = {  # prompts passed, per (method, paradigm)
        ("gapo", "pp"): 25, ("gapo", "pr"): 10, ("sft", "pp"): 10, ("sft", "pr"): 10, ("dpo", "pp"): 10,
        ("dpo", "pr"): 12}
    records, samples = [], {}
    for (m, p), passed in pattern.items():
        name = f"cmp-x-{m}-{p}-s1"
        records.append({"method": m, "paradigm": p, "seed": 1, "name": name})
        samples[name] = {k: (int(i < passed), 1) for i, k in enumerate(keys)}
    return records, samples


def test_build_claims_rows_order_and_holm():
    records, samples = _records_and_samples()
    claims = build_claims(records, samples, "prompt_level_strict_acc", resamples=2000, seed=0)
    order = [(r["paradigm"], r["a"], r["b"]) for r in claims["method_order"]]
    # the paper ranks GAPO 83.9 > SFT 78.3 > DPO 33.3: A is always the paper's higher method
    assert order == [("pp", "gapo", "sft"), ("pp", "gapo", "dpo"), ("pp", "sft", "dpo"),
                     ("pr", "gapo", "sft"), ("pr", "gapo", "dpo"), ("pr", "sft", "dpo")]
    # SFT has no PP-vs-PR row (it does not read the paradigm); DPO has one but no paper number
    assert [(r["method"], r["paper"]) for r in claims["pp_vs_pr"]] == [("dpo", None), ("gapo", (95.4, 82.9))]
    rows = claims["method_order"] + claims["pp_vs_pr"]
    assert all(r["p_holm"] >= r["p"] for r in rows)
    by = {(r.get("paradigm") or r["method"], r["a"], r["b"]): r for r in rows}
    assert by[("pp", "gapo", "sft")]["delta"] == pytest.approx(0.5) and by[("pp", "gapo", "sft")]["verdict"] == "holds"
    assert by[("pr", "sft", "dpo")]["delta"] == pytest.approx(-2 / 30)
    assert by[("pr", "sft", "dpo")]["verdict"] == "inside the noise"
    assert by[("gapo", "pp", "pr")]["verdict"] == "holds"
    md = render_claims(claims)
    assert "| pp | gapo > sft (83.9 vs 78.3) | 1 × 30 | 83.3 | 33.3 | +50.0 [" in md
    assert "| dpo | not reported | 1 × 30 |" in md and "**inside the noise**" in md


def test_build_claims_skips_experiments_without_samples():
    records, samples = _records_and_samples()
    del samples["cmp-x-gapo-pp-s1"]
    claims = build_claims(records, samples, "prompt_level_strict_acc", resamples=100)
    assert not any(r["a"] == "gapo" and r.get("paradigm") == "pp" for r in claims["method_order"])
    assert not any(r["method"] == "gapo" for r in claims["pp_vs_pr"])


def test_pooled_cells_golden():
    # gapo pp: seed 1 passes k0..k2, seed 2 passes k0 only -> 4 of 2 × 4 pairs; a prompt's seeds stay together, so
    # the four prompt clusters are (2, 2), (1, 2), (1, 2), (0, 2): the interval spans [0, 1] at most
    records = [{"method": "gapo", "paradigm": "pp", "seed": s, "name": f"g{s}"} for s in (1, 2)]
    records.append({"method": "sft", "paradigm": "pp", "seed": 1, "name": "s1"})
    samples = {"g1": {"k0": (1, 1), "k1": (1, 1), "k2": (1, 1), "k3": (0, 1)},
               "g2": {"k0": (1, 1), "k1": (0, 1), "k2": (0, 1), "k3": (0, 1)},
               "s1": {"k0": (0, 1), "k1": (0, 1), "k2": (0, 1), "k3": (0, 1)}}
    cells = pooled_cells(records, samples, resamples=2000, seed=0)
    assert [(c["method"], c["seeds"], c["n_prompts"]) for c in cells] == [("gapo", [1, 2], 4), ("sft", [1], 4)]
    gapo, sft = cells
    assert gapo["acc"] == 0.5 and 0.0 <= gapo["ci_low"] < 0.5 < gapo["ci_high"] <= 1.0
    assert sft["acc"] == 0.0 and sft["ci_low"] == sft["ci_high"] == 0.0


def _fake(kind, a, b, v, **kw):
    return {"kind": kind, "a": a, "b": b, "verdict": v, "seeds": [1], "n_prompts": 200, "delta": 0.04,
            "ci_low": -0.005, "ci_high": 0.09, "p_holm": 0.49, **kw}


def test_summarize_statuses():
    claims = {"method_order": [_fake("method_order", "gapo", "sft", "holds", paradigm="pp"),
                               _fake("method_order", "gapo", "ppo", "inside the noise", paradigm="pp"),
                               _fake("method_order", "sft", "ppo", "holds", paradigm="pp")],
              "pp_vs_pr": [_fake("pp_vs_pr", "pp", "pr", "reversed", method="gapo"),
                           _fake("pp_vs_pr", "pp", "pr", "holds", method="ppo")]}
    got = {s["id"]: (s["status"], len(s["rows"])) for s in summarize(claims)}
    assert got == {"gapo_beats_all": ("unresolved", 2), "baseline_order": ("holds", 1), "pp_beats_pr": ("fails", 2)}
    claims["method_order"][1]["verdict"] = "holds"
    claims["pp_vs_pr"] = []
    got = {s["id"]: s["status"] for s in summarize(claims)}
    assert got == {"gapo_beats_all": "holds", "baseline_order": "holds"}  # an untested claim has no verdict


def test_render_has_a_paragraph_per_claim_and_the_pooled_cells():
    records, samples = _records_and_samples()
    claims = build_claims(records, samples, "prompt_level_strict_acc", resamples=500, seed=0)
    md = render_claims(claims)
    assert ("**GAPO beats every other method (Table 4): unresolved.** 4 comparisons: 2 hold, 0 reversed, 2 inside the noise "
            "(n = 1 seed × 30 prompts each)") in md
    assert "gapo > sft (PP data) +50.0 [" in md
    assert "**Preferential Prompt data beats Preferential Response data for the same method (Table 6): " in md
    assert "| pp | gapo | 1 × 30 | 83.3 | [" in md
