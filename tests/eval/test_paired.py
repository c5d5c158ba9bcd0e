"""gapo.eval.paired: golden values worked out by hand, and the bootstrap's determinism and intervals."""
from __future__ import annotations

import math

import pytest

from gapo.eval import paired


# ---------------------------------------------------------------------------------------------------- McNemar
def test_mcnemar_exact_golden_values():
    # b=10, c=2: 2 * P(Bin(12, 1/2) <= 2) = 2 * (1 + 12 + 66) / 4096 = 158 / 4096
    assert paired.mcnemar_exact(10, 2) == pytest.approx(158 / 4096, abs=1e-15)
    assert round(paired.mcnemar_exact(10, 2), 4) == 0.0386
    assert paired.mcnemar_exact(2, 10) == paired.mcnemar_exact(10, 2)  # two-sided: symmetric
    # b=6, c=0: 2 * (1/2)^6 = 1/32
    assert paired.mcnemar_exact(0, 6) == pytest.approx(1 / 32, abs=1e-15)
    # b=c: the tail reaches past one half, so p is capped at 1; no discordant pair: p = 1
    assert paired.mcnemar_exact(5, 5) == 1.0 and paired.mcnemar_exact(0, 0) == 1.0
    # b=15, c=5: 2 * sum_{k<=5} C(20, k) / 2^20 = 2 * 21700 / 1048576
    assert paired.mcnemar_exact(15, 5) == pytest.approx(2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2 ** 20, abs=1e-15)
    # large n stays finite and exact: 300 vs 240 discordant pairs
    p = paired.mcnemar_exact(300, 240)
    assert 0.0 < p < 0.02
    with pytest.raises(ValueError):
        paired.mcnemar_exact(-1, 3)


# ---------------------------------------------------------------------------------------------------- Wald interval
def test_paired_normal_ci_golden_value():
    # b=10, c=2, n=100: d = 0.08, Var = (0.12 - 0.0064) / 100 = 0.001136, se = 0.0337046..., z = 1.959964
    d, lo, hi = paired.paired_normal_ci(10, 2, 100)
    se = math.sqrt(0.001136)
    assert d == pytest.approx(0.08)
    assert lo == pytest.approx(0.08 - 1.959963985 * se, abs=1e-9) and lo == pytest.approx(0.013940, abs=1e-6)
    assert hi == pytest.approx(0.146060, abs=1e-6)
    assert paired.paired_normal_ci(0, 0, 10) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired.paired_normal_ci(6, 6, 10)


# ---------------------------------------------------------------------------------------------------- bootstrap
def _discordant(b: int, c: int, n: int) -> list[float]:
    return [1.0] * b + [-1.0] * c + [0.0] * (n - b - c)


def test_bootstrap_is_deterministic_and_seeded():
    diff = _discordant(10, 2, 100)
    a = paired.paired_bootstrap(diff, [1.0] * 100, 2000, seed=7)
    assert a == paired.paired_bootstrap(diff, [1.0] * 100, 2000, seed=7)
    other = paired.paired_bootstrap(diff, [1.0] * 100, 2000, seed=8)
    assert other["delta"] == a["delta"] == pytest.approx(0.08)
    assert (other["ci_low"], other["ci_high"], other["p_value"]) != (a["ci_low"], a["ci_high"], a["p_value"])


def test_bootstrap_interval_agrees_with_the_normal_interval():
    diff = _discordant(10, 2, 100)
    boot = paired.paired_bootstrap(diff, [1.0] * 100, 10_000, seed=1234)
    _, lo, hi = paired.paired_normal_ci(10, 2, 100)
    assert boot["ci_low"] < 0.08 < boot["ci_high"]
    assert boot["ci_low"] == pytest.approx(lo, abs=0.015) and boot["ci_high"] == pytest.approx(hi, abs=0.015)
    # the interval excludes 0 and the shifted-null p-value is near McNemar's
    assert boot["ci_low"] > 0 and 0.01 < boot["p_value"] < 0.06
    assert boot["p_value"] == pytest.approx(paired.mcnemar_exact(10, 2), abs=0.02)


def test_bootstrap_edge_cases():
    same = paired.paired_bootstrap([0.0] * 30, [1.0] * 30, 500, seed=0)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    # every pair favours the first: each resample gives 1, p = 1 / (B + 1)
    all_b = paired.paired_bootstrap([1.0] * 20, [1.0] * 20, 999, seed=0)
    assert all_b["ci_low"] == all_b["ci_high"] == 1.0 and all_b["p_value"] == pytest.approx(1 / 1000)
    # instruction level: the statistic is a ratio of sums (prompts resampled whole)
    r = paired.paired_bootstrap([2.0, -1.0, 0.0], [3.0, 1.0, 2.0], 100, seed=0)
    assert r["delta"] == pytest.approx(1 / 6)
    for bad in (([], []), ([1.0], [1.0, 1.0]), ([1.0], [0.0])):
        with pytest.raises(ValueError):
            paired.paired_bootstrap(*bad)


# ---------------------------------------------------------------------------------------------------- compare
def _v(key, ids, strict, loose):
    return {"key": key, "instruction_id_list": ids, "prompt_level_strict_acc": all(strict),
            "prompt_level_loose_acc": all(loose), "inst_level_strict_acc": strict, "inst_level_loose_acc": loose}


NC, EX = "punctuation:no_comma", "keywords:existence"
FINAL = [_v(1, [NC], [True], [True]), _v(2, [NC, EX], [True, True], [True, True]),
         _v(3, [EX], [False], [True]), _v(4, [NC, EX], [True, False], [True, False])]
SFT = [_v(1, [NC], [False], [True]), _v(2, [NC, EX], [True, False], [True, True]),
       _v(3, [EX], [False], [False]), _v(4, [NC, EX], [True, True], [True, True])]


def test_compare_golden_values():
    out = paired.compare(FINAL, SFT, [10, 20, 30, 40], [5, 5, 5, 5], resamples=2000, seed=3)
    assert out["n_prompts"] == 4 and out["n_instructions"] == 6 and out["resamples"] == 2000 and out["seed"] == 3
    ps = out["prompt_level_strict_acc"]
    # final passes prompts 1, 2; SFT passes prompt 4: final_only {1, 2}, sft_only {4}
    assert (ps["final"], ps["sft"], ps["delta"]) == (0.5, 0.25, 0.25)
    assert (ps["final_only"], ps["sft_only"]) == (2, 1) and ps["p_mcnemar"] == 1.0  # 2 * P(Bin(3,1/2) <= 1) = 1
    assert ps["ci95_low"] <= 0.25 <= ps["ci95_high"] and 0 < ps["p_bootstrap"] <= 1
    pl = out["prompt_level_loose_acc"]
    # loose: final passes 1, 2, 3; SFT passes 1, 2, 4
    assert (pl["final"], pl["sft"], pl["delta"], pl["final_only"], pl["sft_only"]) == (0.75, 0.75, 0.0, 1, 1)
    inst = out["inst_level_strict_acc"]
    # final 4/6 (1:NC, 2:NC, 2:EX, 4:NC), SFT 3/6 (2:NC, 4:NC, 4:EX)
    assert (inst["final"], inst["sft"]) == (4 / 6, 3 / 6) and inst["delta"] == pytest.approx(1 / 6)
    assert "p_mcnemar" not in inst
    assert out["inst_level_loose_acc"]["delta"] == pytest.approx(5 / 6 - 5 / 6)
    assert out["mean_response_tokens"] == {"final": 25.0, "sft": 5.0, "delta": 20.0}
    nc, ex = out["by_instruction"][NC], out["by_instruction"][EX]
    assert nc["count"] == 3 and nc["final_inst_level_strict_acc"] == 1.0
    assert nc["sft_inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert nc["delta_inst_level_strict_acc"] == pytest.approx(1 / 3)
    assert ex["count"] == 3 and ex["delta_inst_level_strict_acc"] == pytest.approx(1 / 3 - 1 / 3)
    assert ex["delta_inst_level_loose_acc"] == pytest.approx(2 / 3 - 2 / 3)
    assert out == paired.compare(FINAL, SFT, [10, 20, 30, 40], [5, 5, 5, 5], resamples=2000, seed=3)


def test_compare_refuses_unpaired_verdicts():
    with pytest.raises(ValueError, match="same prompt"):
        paired.compare(FINAL, [SFT[1], SFT[0], *SFT[2:]])
    with pytest.raises(ValueError, match="same non-zero number"):
        paired.compare(FINAL, SFT[:3])
