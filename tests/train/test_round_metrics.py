"""gapo.train.round_metrics: the health metrics of a round, the PPO phase's columns and the phase clock, on
hand-computed golden values."""
from __future__ import annotations

import math

import pytest
import torch

from gapo.train import round_metrics as RM

LN3 = math.log(3.0)  # sigmoid(±ln 3) = 0.75 / 0.25


def health(**over):
    args = dict(fake_logits=torch.tensor([LN3, -LN3, 0.0, -LN3]), positive_logits=torch.tensor([LN3, -LN3]),
                verdicts=[True, False, None, True], greedy_verdicts=[True, None, False, False],
                kls=[0.1, 0.3, 0.0, 0.2], entropies=[1.0, 2.0, 3.0, 2.0], lengths=[12, 3, 12, 5],
                stopped=[False, True, False, True], pp={"accuracy": 0.8, "auc": 0.9}, score="prob")
    args.update(over)
    return RM.health_metrics(**args)


def test_health_metrics_golden_values():
    m = health()
    # fakes p = .75 .25 .5 .25: two are rejected (p < .5; .5 is not); positives p = .75 .25: one is accepted
    assert m["rm_acc_fakes"] == pytest.approx(0.5) and m["fool_rate"] == pytest.approx(0.5)
    assert m["rm_acc"] == pytest.approx(3 / 6)
    # P(positive > fake), ties 1/2: +ln3 vs the fakes 0.5+1+1+1, −ln3 vs them 0+0.5+0+0.5 -> 4.5 / 8
    assert m["rm_auc"] == pytest.approx(4.5 / 8)
    assert (m["rm_pp_acc"], m["rm_pp_auc"]) == (0.8, 0.9)
    assert m["rm_prob_fakes"] == pytest.approx(1.75 / 4) and m["rm_prob_positives"] == pytest.approx(0.5)
    assert m["mean_reward"] == pytest.approx(1.75 / 4)  # reward.score = prob: the mean probability
    assert m["kl"] == pytest.approx(0.15) and m["entropy"] == pytest.approx(2.0)
    assert m["verifier_pass_rate"] == pytest.approx(2 / 3)  # the unchecked sample is left out
    assert m["hack_gap"] == pytest.approx(1.75 / 4 - 2 / 3)
    # checked samples: +ln3 passed, −ln3 failed, −ln3 passed -> (1 + 0.5) / 2
    assert m["rm_verifier_auc"] == pytest.approx(0.75)
    assert m["verifier_pass_rate_greedy"] == pytest.approx(1 / 3)
    assert m["response_length"] == pytest.approx(8.0) and m["eos_rate"] == pytest.approx(0.5)
    assert m["n_eval"] == 4
    assert list(m) == ["rm_acc_fakes", "fool_rate", "rm_acc", "rm_auc", "rm_pp_acc", "rm_pp_auc", "rm_prob_fakes",
                       "rm_prob_positives", "mean_reward", "kl", "entropy", "verifier_pass_rate", "hack_gap",
                       "rm_verifier_auc", "verifier_pass_rate_greedy", "response_length", "eos_rate", "n_eval"]


def test_health_metrics_logit_reward_and_undefined_values():
    m = health(score="logit", verdicts=[None] * 4, greedy_verdicts=[None] * 4, pp={},
               positive_logits=torch.tensor([]))
    assert m["mean_reward"] == pytest.approx(-LN3 / 4)  # reward.score = logit: the mean raw logit
    for key in ("verifier_pass_rate", "hack_gap", "rm_verifier_auc", "verifier_pass_rate_greedy", "rm_pp_acc",
                "rm_pp_auc", "rm_prob_positives", "rm_auc"):
        assert math.isnan(m[key]), key
    assert m["rm_acc"] == pytest.approx(2 / 4)  # fakes only


def test_health_metrics_rm_verifier_auc_is_nan_when_every_checked_sample_agrees():
    assert math.isnan(health(verdicts=[True, True, None, True])["rm_verifier_auc"])


def test_ppo_phase_record_golden_values():
    first = dict(reward=0.2, rm_verifier_auc=float("nan"), ratio_dev_first=0.01, pass_rate=0.5, stopped=0.25,
                 kl=0.1, policy_loss=0.3, value_loss=0.4, clipfrac=0.0, kl_coef=0.05)
    last = dict(reward=0.4, rm_verifier_auc=0.7, ratio_dev_first=0.03, pass_rate=0.0, stopped=0.75, kl=0.2,
                policy_loss=-0.1, value_loss=0.2, clipfrac=0.1, kl_coef=0.06)
    r = RM.ppo_phase_record([first, last], steps=6)
    assert r["rollout_reward"] == pytest.approx(0.3) and r["rollout_pass_rate"] == pytest.approx(0.25)
    assert r["rollout_stopped"] == pytest.approx(0.5)
    assert r["rollout_rm_verifier_auc"] == pytest.approx(0.7)  # NaN episodes are left out
    assert r["ratio_dev_first"] == pytest.approx(0.03)  # the worst episode
    assert (r["rollout_kl"], r["policy_loss"], r["value_loss"], r["clipfrac"], r["kl_coef"]) == (0.2, -0.1, 0.2,
                                                                                                  0.1, 0.06)
    assert r["ppo_steps"] == 6 and r["ppo"] == [first, last]
    assert math.isnan(RM.nanmean([float("nan")]))


def test_phase_clock_and_ppo_timings(monkeypatch):
    ticks = iter([10.0, 11.0, 13.5, 20.0, 20.25, 30.0])
    monkeypatch.setattr(RM.time, "perf_counter", lambda: next(ticks))
    clock = RM.PhaseClock()                      # start 10
    with clock.phase("fakes"):                   # 11 -> 13.5
        pass
    clock.add(RM.ppo_timings([{"timing/rollout_s": 1.0, "train_s": 2.0}, {"timing/rollout_s": 0.5}]))
    with clock.phase("eval"):                    # 20 -> 20.25
        pass
    assert clock.elapsed() == pytest.approx(20.0)  # 30 - 10
    assert clock.timings() == {"timing/fakes_s": 2.5, "timing/rollout_s": 1.5, "timing/ppo_forward_s": 0.0,
                               "timing/reward_s": 0.0, "timing/ppo_update_s": 2.0, "timing/eval_s": 0.25}


def test_round_columns_start_with_the_plotted_ones():
    assert RM.ROUND_COLUMNS[:len(RM.DYNAMICS_COLUMNS)] == RM.DYNAMICS_COLUMNS
    assert len(set(RM.ROUND_COLUMNS)) == len(RM.ROUND_COLUMNS) and set(RM.HEADLINE) <= set(RM.ROUND_COLUMNS)
