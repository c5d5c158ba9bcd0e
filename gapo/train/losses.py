"""PPO and reward-model math as pure functions over tensors: masked statistics, log-probs, entropy, KL estimators,
per-token rewards, GAE, the clipped policy and value losses, the KL coefficient controllers, and the two RM losses
(BCE on labelled rows for the encoder RM, Bradley-Terry on pairs for the decoder RM: gapo.models.reward_model).

Semantics and names follow OpenRLHF (`openrlhf/models/utils.py`, `loss.py`, `kl_controller.py`,
`trainer/ppo_utils/experience_maker.py`), which is what the released GAPO code runs (arXiv 2503.20194).
Every function is stateless except the two KL controllers, has no model or engine dependency and is
golden-value tested by hand in tests/train/test_losses.py.

Shape conventions: `(B, T)` tensors are per *response token* (action) of a right-padded batch;
`action_mask` is 1 on real response tokens and 0 on padding (after EOS). Masked-out positions never
contribute to a mean, a variance, an advantage or a loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "masked_mean", "masked_var", "masked_whiten", "log_probs_from_logits", "entropy_from_logits",
    "compute_approx_kl", "compute_reward", "get_advantages_and_returns", "group_relative_scores", "pad_right",
    "policy_loss", "value_loss", "binary_cross_entropy_loss", "bradley_terry_loss",
    "FixedKLController", "AdaptiveKLController", "build_kl_controller",
]


# ---------------------------------------------------------------------------------------------- masked stats
def masked_mean(tensor: torch.Tensor, mask: Optional[torch.Tensor], dim: Optional[int] = None) -> torch.Tensor:
    """Mean of `tensor` over positions where `mask` is 1 (all of them if `mask` is None).

    `dim=None` averages over every unmasked element of the batch; `dim=-1` gives one mean per row.
    A row with an empty mask yields NaN here by design, so callers notice (and NumericalError fires)
    instead of silently training on 0/0 clamped to zero.
    """
    if mask is None:
        return tensor.mean() if dim is None else tensor.mean(dim=dim)
    mask = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * mask).sum() / mask.sum()
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)


def masked_var(tensor: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance over the unmasked elements (all rows together).

    `unbiased=False` is OpenRLHF's replay-buffer normalisation (divide by N); TRL's `masked_var`
    applies Bessel's correction N/(N-1) (`unbiased=True`).
    """
    mean = masked_mean(tensor, mask)
    var = masked_mean((tensor - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n <= 1:
            raise ValueError("masked_var(unbiased=True) needs at least two unmasked elements")
        var = var * n / (n - 1)
    return var


def masked_whiten(tensor: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = False,
                  eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening: (x − mean) / sqrt(var + eps) over the unmasked elements of the whole batch.

    One global mean and std for the replay buffer, as OpenRLHF does (not per row: a per-row
    std would blow up rows with one or two tokens). `shift_mean=False` keeps the mean (TRL's option,
    used for rewards). Padded positions are set to 0 so they never leak into a later sum.
    """
    mean = masked_mean(tensor, mask)
    var = masked_var(tensor, mask, unbiased=unbiased)
    out = (tensor - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


# ---------------------------------------------------------------------------------------------- log-probs / entropy
def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position: `(B, T, V), (B, T) -> (B, T)`.

    Computed as logit[label] − logsumexp(logits) in float32, which avoids materialising the full
    (B, T, V) log-softmax (the memory peak of PPO's forward pass) and is exact to fp32 rounding.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position: H = logsumexp(z) − Σ softmax(z)·z, nats."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# ---------------------------------------------------------------------------------------------- KL and rewards
def compute_approx_kl(log_probs: torch.Tensor, log_probs_base: torch.Tensor,
                      action_mask: Optional[torch.Tensor] = None, kl_estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate from samples of π_θ (Schulman, "Approximating KL divergence").

    With log r = log π_ref − log π_θ:
      k1 = −log r = log π_θ − log π_ref   (unbiased, can be negative per token; OpenRLHF's default and
                                            GAPO's setting, arXiv 2503.20194)
      k3 = (r − 1) − log r                 (unbiased, always ≥ 0, lower variance; trl#3240)
    Clamped to [−10, 10] like OpenRLHF so one degenerate token cannot dominate the reward.
    """
    log_ratio = log_probs.float() - log_probs_base.float()
    if action_mask is not None:
        log_ratio = log_ratio * action_mask.to(log_ratio.dtype)
    if kl_estimator == "k1":
        kl = log_ratio
    elif kl_estimator == "k3":
        neg = -log_ratio
        kl = neg.exp() - 1 - neg
    else:
        raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
    return kl.clamp(min=-10.0, max=10.0)


def last_token_index(action_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask, shape (B,)."""
    T = action_mask.size(1)
    return T - 1 - action_mask.long().fliplr().argmax(dim=1)


def penalize_missing_eos(score: torch.Tensor, stopped: torch.Tensor, penalty: float) -> torch.Tensor:
    """The sequence score minus `penalty` where the response ran into the length cap without a stop token
    (TRL's `missing_eos_penalty`). A truncated response is never shown to the user as finished, and a policy that
    is not told so learns to ramble: greedy SmolLM2 after SFT stopped on 24% of test prompts (docs/method.md).

    `score`: (B,); `stopped`: (B,) bool; returns (B,).
    """
    return score - float(penalty) * (~stopped.bool()).to(score.dtype)


def compute_reward(r: torch.Tensor, kl_coef: float, kl: torch.Tensor, action_mask: torch.Tensor,
                   reward_clip_range: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """Per-token reward of OpenRLHF/GAPO: r_t = −β·KL_t on every response token, plus the sequence
    score r (the RM's output, clipped to `reward_clip_range`) on the last real response token.

    `r`: (B,); `kl`: (B, T); returns (B, T), zero on padding.
    """
    kl_coef = max(float(kl_coef), 0.0)
    if reward_clip_range is not None:
        r = r.clamp(min=reward_clip_range[0], max=reward_clip_range[1])
    mask = action_mask.to(kl.dtype)
    kl_reward = -kl_coef * kl * mask
    last = last_token_index(action_mask).unsqueeze(1)
    last_reward = torch.zeros_like(kl).scatter_(1, last, r.to(kl.dtype).unsqueeze(1))
    return last_reward + kl_reward


def get_advantages_and_returns(values: torch.Tensor, rewards: torch.Tensor, action_mask: torch.Tensor,
                               gamma: float, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over response tokens:

        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   returns_t = A_t + V_t,

    with V_T = 0 after the last token. Values and rewards are masked first, so positions after EOS
    contribute δ = 0 and the recursion carries nothing across the padding (right padding only).
    This is the paper's A_n = Q(c_n,t_n) − V(c_n) with Q estimated by λ-returns (arXiv 2503.20194).
    """
    mask = action_mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.size(1)
    last = torch.zeros_like(values[:, 0])
    reversed_adv = []
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t < T - 1 else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lambd * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    return advantages.detach(), returns.detach()


def group_relative_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out baseline (RLOO, Ahmadian et al. 2024): s_i − mean of the OTHER G−1 scores of its group.

    `scores`: (B,) with the G samples of each prompt consecutive (B a multiple of G). Unlike GRPO's (s − mean)/std,
    no division: a group whose samples all score alike gives zeros, not noise blown up by a tiny std. The LOO
    mean keeps the estimator unbiased (a sample's own score is not in its baseline).
    """
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"group_relative_scores: {scores.numel()} scores do not split into groups of {group_size} "
                         "(need group_size >= 2)")
    g = scores.view(-1, group_size)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def pad_right(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row 1-D tensors of different lengths -> (B, T) right-padded with 0, and the (B, T) 0/1 mask."""
    T = max((r.numel() for r in rows), default=0)
    out = torch.zeros((len(rows), T))
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.float()
        mask[i, : r.numel()] = 1.0
    return out, mask


# ---------------------------------------------------------------------------------------------- losses
def _reduce(loss: torch.Tensor, mask: torch.Tensor, token_level: bool) -> torch.Tensor:
    # OpenRLHF 0.5 (what GAPO ran): mean over each sequence's tokens, then over sequences.
    # token_level=True: one mean over all tokens of the batch (long answers weigh more; DAPO-style).
    if token_level:
        return masked_mean(loss, mask)
    return masked_mean(loss, mask, dim=-1).mean()


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                action_mask: torch.Tensor, clip_eps: float = 0.2, token_level: bool = False
                ) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: −mean min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = exp(log π_θ − log π_old).

    We use the ratio against π_old with clipping (standard PPO, the released code), not the paper's
    summarised L_G with a ratio against π_ref and no clip (arXiv 2503.20194; docs/method.md).
    Returns the loss and detached stats: clip fraction and the k3 estimate of KL(π_old ‖ π_θ).
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    loss = _reduce(-torch.min(surr1, surr2), action_mask, token_level)
    with torch.no_grad():
        mask = action_mask.to(ratio.dtype)
        clipfrac = masked_mean(((ratio - 1).abs() > clip_eps).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, {"clipfrac": float(clipfrac), "ppo_kl": float(approx_kl)}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, action_mask: torch.Tensor,
               clip_eps: Optional[float] = 0.2, token_level: bool = False) -> torch.Tensor:
    """Clipped value loss: 0.5·mean max((V_clip − R)², (V − R)²), V_clip = V_old + clip(V − V_old, ±ε).

    The paper's L_V = E[(V − R)²] (arXiv 2503.20194) is the unclipped case (`clip_eps=None`).
    """
    if clip_eps is not None:
        clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss = torch.max((clipped - returns) ** 2, (values - returns) ** 2)
    else:
        loss = (values - returns) ** 2
    return 0.5 * _reduce(loss, action_mask, token_level)


# ---------------------------------------------------------------------------------------------- reward-model losses
def binary_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over rows: the encoder RM's loss (GAPO's discriminator: label 1 for the accepted
    (prompt, response), 0 for a rejected prompt or a generated answer). `labels` are floats in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r_w − r_l), mean over pairs: the pairwise RM loss of InstructGPT / OpenRLHF (the decoder RM)."""
    return -F.logsigmoid(chosen - rejected).mean()


# ---------------------------------------------------------------------------------------------- KL controllers
class FixedKLController:
    """β stays at its initial value (GAPO's setting: init_kl_coef 0.01, kl_target None)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (OpenRLHF's AdaptiveKLController): move β towards a KL target,

        e = clip(KL / target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current: float, n_steps: int) -> None:
        error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def build_kl_controller(init_kl_coef: float, kl_target: Optional[float], kl_horizon: int):
    """Fixed when `kl_target` is None (OpenRLHF's rule), adaptive otherwise."""
    if kl_target is None:
        return FixedKLController(init_kl_coef)
    return AdaptiveKLController(init_kl_coef, kl_target, kl_horizon)
