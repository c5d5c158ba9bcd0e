"""Golden values for gapo.train.losses, each worked out by hand in the comments (small tensors,
right-padded masks, garbage in the padded slots so a masking bug changes the answer)."""
from __future__ import annotations

import math

import pytest
import torch

from gapo.train import losses as L

T = torch.tensor


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------ masked stats
X = T([[1.0, 2.0, 99.0], [4.0, -50.0, 7.0]])
M = T([[1, 1, 0], [1, 0, 0]])


def test_masked_mean_global_and_per_row():
    # unmasked: 1, 2 | 4  -> global (1+2+4)/3 = 7/3; rows: (1+2)/2 = 1.5, 4/1 = 4
    close(L.masked_mean(X, M), 7 / 3)
    close(L.masked_mean(X, M, dim=-1), [1.5, 4.0])
    close(L.masked_mean(X, None), X.mean())


def test_masked_var_biased_and_unbiased():
    # deviations from 7/3: -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9
    # biased (OpenRLHF): 42/9 / 3 = 14/9; unbiased (TRL, Bessel): 42/9 / 2 = 7/3
    close(L.masked_var(X, M), 14 / 9)
    close(L.masked_var(X, M, unbiased=True), 7 / 3)


def test_masked_whiten_by_hand():
    # (x - 7/3) / sqrt(14/9) = (x - 7/3) * 3/sqrt(14): 1 -> -4/sqrt14, 2 -> -1/sqrt14, 4 -> 5/sqrt14; pads -> 0
    s = math.sqrt(14)
    out = L.masked_whiten(X, M, eps=0.0)
    close(out, [[-4 / s, -1 / s, 0.0], [5 / s, 0.0, 0.0]])
    close(L.masked_mean(out, M), 0.0)
    close(L.masked_var(out, M), 1.0, tol=1e-5)
    # shift_mean=False adds the mean back: -4/s + 7/3, ...
    keep = L.masked_whiten(X, M, shift_mean=False, eps=0.0)
    close(keep, [[-4 / s + 7 / 3, -1 / s + 7 / 3, 0.0], [5 / s + 7 / 3, 0.0, 0.0]])


# ------------------------------------------------------------------------------------------ log-probs, entropy
def test_log_probs_and_entropy_by_hand():
    # logits = log([1, 2, 1]) -> softmax [1/4, 1/2, 1/4]; second row uniform over 3
    logits = torch.log(T([[[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]]])) + 3.0  # a constant shift changes nothing
    labels = T([[1, 2]])
    close(L.log_probs_from_logits(logits, labels), [[math.log(0.5), math.log(1 / 3)]])
    # H([1/4,1/2,1/4]) = 2·(1/4)·ln4 + (1/2)·ln2 = ln2 + ln2/2 = 1.5·ln2 ; H(uniform 3) = ln3
    close(L.entropy_from_logits(logits), [[1.5 * math.log(2), math.log(3)]])


# ------------------------------------------------------------------------------------------ KL estimators
def test_approx_kl_k1_k3_by_hand():
    lp = T([[-1.0, -2.0, -0.5]])
    base = T([[-1.5, -1.0, 3.0]])  # pad slot has a wild value on purpose
    mask = T([[1, 1, 0]])
    # k1 = lp - base: 0.5, -1.0 ; pad -> 0
    close(L.compute_approx_kl(lp, base, mask, "k1"), [[0.5, -1.0, 0.0]])
    # k3 with log r = base - lp = -0.5, 1.0: e^-0.5 - 1 + 0.5 = 0.1065307 ; e^1 - 1 - 1 = 0.7182818 ; pad 0
    close(L.compute_approx_kl(lp, base, mask, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])
    assert (L.compute_approx_kl(lp, base, mask, "k3") >= 0).all()
    # both are clamped at ±10 (OpenRLHF): log ratio 30 -> 10
    close(L.compute_approx_kl(T([[0.0]]), T([[-30.0]]), None, "k1"), [[10.0]])
    with pytest.raises(ValueError):
        L.compute_approx_kl(lp, base, mask, "k2")


# ------------------------------------------------------------------------------------------ per-token reward
def test_compute_reward_kl_on_every_token_score_on_last():
    r = T([2.0, 20.0])
    kl = T([[0.5, -1.0, 0.3], [0.2, 0.2, 0.2]])
    mask = T([[1, 1, 0], [1, 1, 1]])
    # beta 0.1; row 0: -0.05, +0.1 + 2.0 (last real token), pad 0
    # row 1: score 20 clipped to 10: -0.02, -0.02, -0.02 + 10
    out = L.compute_reward(r, 0.1, kl, mask, reward_clip_range=(-10.0, 10.0))
    close(out, [[-0.05, 2.1, 0.0], [-0.02, -0.02, 9.98]])
    # a negative beta counts as 0 (OpenRLHF)
    close(L.compute_reward(r, -1.0, kl, mask, None), [[0.0, 2.0, 0.0], [0.0, 0.0, 20.0]])


# ------------------------------------------------------------------------------------------ GAE
def test_gae_by_hand_with_padding():
    # gamma 0.9, lambda 0.8, mask [1,1,0]; pad slots hold garbage (9, 7) that must be ignored
    # V = [1, 0.5, 0], r = [0, 1, 0] after masking
    # t=2: delta = 0 ; A2 = 0
    # t=1: delta = 1 + 0.9·0 - 0.5 = 0.5 ; A1 = 0.5
    # t=0: delta = 0 + 0.9·0.5 - 1 = -0.55 ; A0 = -0.55 + 0.9·0.8·0.5 = -0.19
    # returns = A + V = [0.81, 1.0, 0]
    values = T([[1.0, 0.5, 9.0]])
    rewards = T([[0.0, 1.0, 7.0]])
    adv, ret = L.get_advantages_and_returns(values, rewards, T([[1, 1, 0]]), gamma=0.9, lambd=0.8)
    close(adv, [[-0.19, 0.5, 0.0]])
    close(ret, [[0.81, 1.0, 0.0]])


def test_gae_paper_defaults_and_monte_carlo_limit():
    # gamma 1, lambda 0.95 (arXiv 2503.20194); V = [0.2, 0.4, 0.6]; r = [-0.01, -0.01, 0.99]
    # t=2: delta = 0.99 - 0.6 = 0.39 ; A2 = 0.39
    # t=1: delta = -0.01 + 0.6 - 0.4 = 0.19 ; A1 = 0.19 + 0.95·0.39 = 0.5605
    # t=0: delta = -0.01 + 0.4 - 0.2 = 0.19 ; A0 = 0.19 + 0.95·0.5605 = 0.722475
    values = T([[0.2, 0.4, 0.6]])
    rewards = T([[-0.01, -0.01, 0.99]])
    mask = T([[1, 1, 1]])
    adv, ret = L.get_advantages_and_returns(values, rewards, mask, gamma=1.0, lambd=0.95)
    close(adv, [[0.722475, 0.5605, 0.39]])
    close(ret, [[0.922475, 0.9605, 0.99]])
    # lambda = 1: returns are the Monte-Carlo reward-to-go 0.97, 0.98, 0.99 whatever V is
    _, ret1 = L.get_advantages_and_returns(values, rewards, mask, gamma=1.0, lambd=1.0)
    close(ret1, [[0.97, 0.98, 0.99]])


# ------------------------------------------------------------------------------------------ policy loss
def test_policy_loss_clipping_by_hand():
    # rho = exp(lp - old) = [1.5, 0.5, 1.1 | 0.9, 1.0, pad]
    old = torch.zeros(2, 3)
    lp = torch.log(T([[1.5, 0.5, 1.1], [0.9, 1.0, 5.0]])).requires_grad_()
    adv = T([[1.0, -1.0, 2.0], [-2.0, 0.5, 100.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    # row 0: t0 min(1.5·1, 1.2·1) = 1.2 -> -1.2 ; t1 min(0.5·-1, 0.8·-1) = -0.8 -> +0.8 ; t2 1.1·2 -> -2.2
    #        mean = -2.6/3 = -0.8666667
    # row 1: t0 min(0.9·-2, 0.9·-2) = -1.8 -> +1.8 ; t1 1·0.5 -> -0.5 ; mean = 1.3/2 = 0.65
    # sequence mean then batch mean: (-0.8666667 + 0.65)/2 = -0.1083333
    loss, stats = L.policy_loss(lp, old, adv, mask, clip_eps=0.2)
    close(loss, (-2.6 / 3 + 0.65) / 2)
    # token level: (-1.2 + 0.8 - 2.2 + 1.8 - 0.5)/5 = -0.26
    close(L.policy_loss(lp, old, adv, mask, clip_eps=0.2, token_level=True)[0], -0.26)
    # |rho - 1| > 0.2 for 1.5 and 0.5: 2 of 5 tokens
    assert stats["clipfrac"] == pytest.approx(0.4)
    # clipped tokens (rho 1.5 with A>0, rho 0.5 with A<0) and padding get no gradient
    loss.backward()
    g = lp.grad
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 2] == 0
    # d/dlp of -(rho·A)/3/2 at t2 = -1.1·2/6
    close(g[0, 2], -1.1 * 2 / 6)


# ------------------------------------------------------------------------------------------ value loss
def test_value_loss_clipping_by_hand():
    old = T([[1.0, 1.0, 0.0]])
    v = T([[1.5, 0.9, 7.0]])
    ret = T([[2.0, 0.0, -3.0]])
    mask = T([[1, 1, 0]])
    # t0: V_clip = 1 + clip(0.5, ±0.2) = 1.2 ; max((1.2-2)², (1.5-2)²) = max(0.64, 0.25) = 0.64
    # t1: V_clip = 1 + (-0.1) = 0.9 ; max(0.81, 0.81) = 0.81 ; mean 0.725 ; × 0.5 = 0.3625
    close(L.value_loss(v, old, ret, mask, clip_eps=0.2), 0.3625)
    # unclipped (the paper's MSE): 0.5 · (0.25 + 0.81)/2 = 0.265
    close(L.value_loss(v, old, ret, mask, clip_eps=None), 0.265)


# ------------------------------------------------------------------------------------------ reward-model losses
def test_binary_cross_entropy_loss_by_hand():
    # rows (logit, label): (0, 1) -> -log σ(0) = ln 2; (ln 3, 0) -> -log(1 - 3/4) = ln 4; (-ln 3, 0) -> -log(3/4)
    # mean = (ln 2 + ln 4 + ln 4 - ln 3) / 3 = (5 ln 2 - ln 3) / 3
    logits, labels = T([0.0, math.log(3), -math.log(3)]), T([1.0, 0.0, 0.0])
    close(L.binary_cross_entropy_loss(logits, labels), (5 * math.log(2) - math.log(3)) / 3)


def test_bradley_terry_loss_by_hand():
    # pairs (r_w, r_l): (ln 3, 0) -> -log σ(ln 3) = ln(4/3); (1, 1) -> ln 2; (0, ln 3) -> -log σ(-ln 3) = ln 4
    # mean = (ln 4 - ln 3 + ln 2 + ln 4) / 3 = (5 ln 2 - ln 3) / 3
    chosen, rejected = T([math.log(3), 1.0, 0.0]), T([0.0, 1.0, math.log(3)])
    close(L.bradley_terry_loss(chosen, rejected), (5 * math.log(2) - math.log(3)) / 3)


# ------------------------------------------------------------------------------------------ KL controllers
def test_kl_controllers():
    fixed = L.build_kl_controller(0.01, None, 10000)
    fixed.update(123.0, 64)
    assert fixed.value == 0.01
    ada = L.build_kl_controller(0.1, 6.0, 10000)
    # KL 12 vs target 6: error clip(12/6 - 1) = 0.2 ; β = 0.1·(1 + 0.2·100/10000) = 0.1002
    ada.update(12.0, 100)
    assert ada.value == pytest.approx(0.1002)
    # KL 5.7: error -0.05 ; β = 0.1002·(1 - 0.05·100/10000) = 0.1002·0.9995
    ada.update(5.7, 100)
    assert ada.value == pytest.approx(0.1002 * 0.9995)
    restored = L.build_kl_controller(0.1, 6.0, 10000)
    restored.load_state_dict(ada.state_dict())
    assert restored.value == ada.value


def test_group_relative_scores_leave_one_out_by_hand():
    from gapo.train.losses import group_relative_scores

    s = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # G = 2: each sample minus the other one of its pair
    torch.testing.assert_close(group_relative_scores(s, 2), torch.tensor([-1.0, 1.0, -3.0, 3.0]))
    # G = 4: 1 − 11/3, 2 − 10/3, 3 − 9/3, 6 − 6/3
    torch.testing.assert_close(group_relative_scores(s, 4), torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    # a group whose samples tie gets no signal (no division by a tiny std, unlike GRPO)
    torch.testing.assert_close(group_relative_scores(torch.tensor([5.0, 5.0, 5.0]), 3), torch.zeros(3))
    with pytest.raises(ValueError, match="groups of 4"):
        group_relative_scores(torch.ones(6), 4)
    with pytest.raises(ValueError):
        group_relative_scores(torch.ones(4), 1)


def test_pad_right():
    from gapo.train.losses import pad_right

    out, mask = pad_right([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
    torch.testing.assert_close(mask, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_penalize_missing_eos_by_hand():
    score = torch.tensor([0.5, -1.0, 2.0])
    stopped = torch.tensor([True, False, False])
    assert L.penalize_missing_eos(score, stopped, 1.5).tolist() == [0.5, -2.5, 0.5]
    assert L.penalize_missing_eos(score, stopped, 0.0).tolist() == score.tolist()
