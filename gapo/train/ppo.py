"""PPO of the generator against the encoder reward model, with OpenRLHF's semantics (arXiv 2503.20194).

This module owns one PPO *iteration* and the pieces it is made of, and a round's PPO phase (`run_ppo_phase`:
the episodes and their seeds, shared by gapo.train.adversarial's rounds and the PPO baseline of
gapo.train.baselines). One iteration on a batch of prompts:

1. `make_experience`: sample and decode responses (gapo.train.rollout over the batched KV-cached sampler; from a
   bf16 copy of the policy when `ppo.autocast` is on), then for every response token the actor's log-prob (π_old), the
   frozen reference's log-prob (π_ref; with LoRA the same base, adapter off) and the critic's value (GAE only);
   the reward of a response is the RM's score of the DECODED text re-tokenised with the RM's own tokenizer
   (never the policy's ids: a bug of the released code), as a sigmoid probability or a raw logit
   (`reward.score`). Per-token reward r_t = −β·KL_t, plus the clipped score on the last response token;
   GAE(γ, λ) gives advantages and returns (gapo.train.losses), or, critic-free (`ppo.advantage_estimator:
   group`), the score minus the mean score of the other samples of the same prompt (`group_advantages`).
2. `whiten_advantages`: one global mean/std over the whole rollout batch (all ranks).
3. `ppo_train`: `max_epochs` passes over the rollouts in minibatches of `train_batch_size` (micro-batches of
   `micro_train_batch_size`, gradient accumulation inside the DeepSpeed engines); clipped policy loss on the
   actor, clipped value loss on the critic, each its own engine and optimizer.
4. the KL controller sees the rollouts' mean KL (fixed β unless `ppo.kl_target` is set).

NaN/inf in a reward, an advantage or a loss raises `NumericalError` naming the round and step: training never
continues silently on a poisoned batch (OpenRLHF#1120: NaN loss then reward collapse, unnoticed).

`run_ppo_smoke(params, ws, iterations)` runs PPO iterations against a fixed RM (checkpoints/sft +
checkpoints/rm_warmup) in one process or on every rank of a torchrun job: the multi-process smoke test.
"""
from __future__ import annotations

import inspect
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from gapo.config import ConfigError, OptimConfig, Params
from gapo.runtime import bars_off
from gapo.train.guards import check_finite, inject_nan
from gapo.train.losses import (build_kl_controller, compute_approx_kl, compute_reward, entropy_from_logits,
                               get_advantages_and_returns, log_probs_from_logits, masked_mean, masked_whiten,
                               penalize_missing_eos, policy_loss, value_loss)
from gapo.train.rollout import sample_rows


# ------------------------------------------------------------------------------------------ containers
@dataclass
class PPOModels:
    """Everything a PPO iteration touches. `actor` and `critic` are DeepSpeed training engines (`critic` is None
    for the critic-free `ppo.advantage_estimator: group`), `ref` is the frozen SFT policy (with LoRA: the actor's
    own base, adapter off), `reward` the RM (engine or module) with its own tokenizer; `tokenizer` is the
    policy's. `rollout_copy` is the bf16 copy the sampler decodes with (refreshed every episode)."""

    actor: Any
    critic: Any
    ref: Any
    reward: Any
    tokenizer: Any
    reward_tokenizer: Any
    kl_ctl: Any = None
    rollout_copy: Any = None

    @property
    def device(self) -> torch.device:
        return next(_module(self.actor).parameters()).device


@dataclass
class Rollout:
    """One sampled response with its per-token PPO quantities, padding trimmed (re-batched for training)."""

    prompt_ids: torch.Tensor      # (P_i,)
    response_ids: torch.Tensor    # (N_i,) up to and including EOS when one was emitted
    log_probs: torch.Tensor       # (N_i,) log π_old
    values: torch.Tensor          # (N_i,) V_old
    advantages: torch.Tensor      # (N_i,)
    returns: torch.Tensor         # (N_i,)
    score: float = 0.0            # RM score (before clipping)
    passed: Optional[bool] = None  # verifier verdict (not used by PPO; health metric)
    micro: int = -1               # the training micro-batch it belongs to (its π_old was computed in that layout)


@dataclass
class Where:
    """Names the place of a numerical failure: `adversarial round 2 ppo step 5`."""

    round: int = 0
    step: int = 0
    stage: str = "ppo"

    def __str__(self) -> str:
        head = f"adversarial round {self.round} " if self.round else ""
        return f"{head}{self.stage} step {self.step}"


def _module(model):
    return getattr(model, "module", model)


def forward_autocast(params: Params, device: torch.device):
    """bf16 autocast for the policy's forwards (`ppo.autocast`); log-probs, ratios, KL and advantages are computed
    from float32 logits (`log_probs_from_logits` upcasts) and stay float32."""
    from gapo.models.loading import autocast_context

    return autocast_context(device.type, params.ppo.autocast, params.models)


def rollout_policy(models: PPOModels, params: Params):
    """The module the sampler decodes with: with bf16 autocast on, a bf16 copy of the current policy (adapters
    merged), refreshed from the actor; else the actor itself. Decoding multiplies a few rows by every weight each
    step, so autocast would re-cast all 135 M weights per token; the copy casts them once per episode."""
    import contextlib

    from gapo.models.adapters import has_lora, merged_state_dict
    from gapo.train.sampler import bf16_decoder

    actor = _module(models.actor)
    no_autocast = isinstance(forward_autocast(params, models.device), contextlib.nullcontext)
    partitioned = any(hasattr(p, "ds_id") for p in actor.parameters())  # ZeRO-3: gathered inside the forward
    if no_autocast or partitioned or not hasattr(actor, "config"):
        return actor
    state = merged_state_dict(actor) if has_lora(actor) else None
    models.rollout_copy = bf16_decoder(actor, state, into=models.rollout_copy)
    return models.rollout_copy


# ------------------------------------------------------------------------------------------ optimisation setup
def ppo_optim(params: Params, learning_rate: float, world: int) -> OptimConfig:
    """OptimConfig of the actor or critic engine: OpenRLHF's Adam betas (0.9, 0.95), no weight decay, and a
    CONSTANT learning rate (no warm-up or decay) so that round k trains the same way whatever the number of rounds
    (a cosine over all rounds would make round 1 depend on R, and `-S adversarial.rounds=R+1` could not resume)."""
    ppo = params.ppo
    per_step = ppo.micro_train_batch_size * world
    if ppo.train_batch_size % per_step:
        raise ConfigError(f"ppo.train_batch_size ({ppo.train_batch_size}) must be a multiple of "
                          f"micro_train_batch_size × processes ({ppo.micro_train_batch_size} × {world})")
    return OptimConfig(learning_rate=learning_rate, weight_decay=0.0, adam_betas=(0.9, 0.95), warmup_ratio=0.0,
                       min_lr_ratio=1.0, micro_batch_size=ppo.micro_train_batch_size,
                       gradient_accumulation_steps=ppo.train_batch_size // per_step)


def check_batch_sizes(params: Params, world: int) -> None:
    """Every rank must see whole minibatches (gradient accumulation boundaries) and whole rollout micro-batches."""
    ppo = params.ppo
    n = ppo.rollout_batch_size * ppo.n_samples_per_prompt
    if ppo.rollout_batch_size % world:
        raise ConfigError(f"ppo.rollout_batch_size ({ppo.rollout_batch_size}) must be divisible by the number of "
                          f"processes ({world})")
    if n % ppo.train_batch_size:
        raise ConfigError(f"ppo.rollout_batch_size × n_samples_per_prompt ({n}) must be a multiple of "
                          f"ppo.train_batch_size ({ppo.train_batch_size})")
    ppo_optim(params, 1.0, world)


def with_ppo_clipping(params: Params) -> Params:
    """The params the actor/critic engines are built with: DeepSpeed's gradient clipping = `ppo.max_norm`."""
    p = params.model_copy(deep=True)
    p.deepspeed.gradient_clipping = params.ppo.max_norm
    return p


# ------------------------------------------------------------------------------------------ forward passes
def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(_module(model).forward).parameters
    except (TypeError, ValueError):
        return False


def response_log_probs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, n_actions: int,
                       with_entropy: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log π(a_t | s_t) for the last `n_actions` tokens (the response), and optionally the entropy there.

    The logit at position j predicts token j+1, hence the slice [-(N+1):-1]. Positions come from the mask, as in
    the sampler, so left padding does not shift them; `logits_to_keep` skips the vocabulary projection of the
    prompt positions (~20% of a small model's forward cost).
    """
    from gapo.train.sampler import position_ids_from_mask

    kwargs = dict(input_ids=sequences, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = n_actions + 1
    logits = model(**kwargs).logits[:, -(n_actions + 1):-1]
    logp = log_probs_from_logits(logits, sequences[:, -n_actions:])
    ent = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, ent


def response_values(critic, sequences: torch.Tensor, attention_mask: torch.Tensor, n_actions: int) -> torch.Tensor:
    """V(s_t) for each response token: the critic's value of the prefix BEFORE the action (same shift as log-probs)."""
    return critic(input_ids=sequences, attention_mask=attention_mask)[:, -(n_actions + 1):-1]


# ------------------------------------------------------------------------------------------ experience
def verifier_verdicts(rows: Sequence[dict], responses: Sequence[str]) -> list[Optional[bool]]:
    """IFEval strict verdict per response (gapo.data.constraints.check_response); None for a row without
    `instruction_id_list` (a user prompt we cannot check)."""
    from gapo.data.constraints import check_response

    out: list[Optional[bool]] = []
    for r, text in zip(rows, responses):
        ids = r.get("instruction_id_list")
        out.append(None if not ids else check_response(text, ids, r.get("kwargs") or [{}] * len(ids),
                                                       prompt=r.get("prompt", ""))[0])
    return out


@torch.no_grad()
def make_experience(models: PPOModels, rows: Sequence[dict], params: Params, kl_coef: float,
                    where: Where) -> tuple[list[Rollout], dict]:
    """Rollouts on `rows` (IFEval-format prompts: prompt, instruction_id_list, kwargs) with everything PPO needs.

    Returns the rollouts (advantages not yet whitened) and stats averaged over this rank's samples: `reward`
    (RM score, less `ppo.missing_eos_penalty` where the response did not stop), `kl` (mean per-token KL to the
    reference), `entropy`, `response_length`, `stopped` (share ending on a stop id), `pass_rate`.
    """
    from tqdm import tqdm

    from gapo.models.prompting import pad_token_id
    from gapo.train import engine as E
    from gapo.train.reward import rm_score

    ppo = params.ppo
    tok = models.tokenizer
    pad = pad_token_id(tok)
    device = models.device
    expanded = [r for r in rows for _ in range(ppo.n_samples_per_prompt)]
    rollouts: list[Rollout] = []
    acc: dict[str, list[float]] = {"reward": [], "kl": [], "entropy": [], "response_length": [], "stopped": [],
                                   "pass": []}
    clock = {"rollout": 0.0, "forward": 0.0, "reward": 0.0}  # seconds per phase (timing/<phase>_s, docs/benchmarks.md)
    group = ppo.advantage_estimator == "group"
    t_copy = time.perf_counter()
    decoder = rollout_policy(models, params)
    clock["rollout"] += time.perf_counter() - t_copy
    actor = _module(models.actor)
    critic = _module(models.critic) if models.critic is not None else None
    actor.eval()
    if critic is not None:
        critic.eval()
    kls: list[torch.Tensor] = []  # per-token KL per rollout (the group estimator shapes rewards after the loop)
    n_micro = 0
    bar = tqdm(range(0, len(expanded), ppo.micro_rollout_batch_size), desc=f"{where.stage} rollouts",
               disable=bars_off(E.is_main()), dynamic_ncols=True, leave=False, mininterval=1.0)
    for start in bar:
        chunk = expanded[start:start + ppo.micro_rollout_batch_size]
        t0 = time.perf_counter()
        gen = sample_rows(decoder, chunk, tok, params)
        s, texts = gen.samples, gen.texts
        t1 = time.perf_counter()
        # The RM reads TEXT in its own tokenizer: the decoded response, never the policy's ids (§8 bug 5).
        verdicts = verifier_verdicts(chunk, texts)
        if ppo.reward_source == "verifier":  # the oracle ablation: the checkers themselves, no RM
            if any(v is None for v in verdicts):
                raise ConfigError("ppo.reward_source=verifier: a prompt has no instruction_id_list to check")
            score = torch.tensor([1.0 if v else -1.0 for v in verdicts], device=device)
        else:
            score = rm_score(models.reward, models.reward_tokenizer, [r["prompt"] for r in chunk], texts, params)
            score = score.to(device).float()
        t2 = time.perf_counter()
        score = inject_nan("ppo.reward", score, round=where.round, step=where.step)  # fault-injection hook
        check_finite(score, "reward-model score", where)
        lengths = gen.lengths
        stopped = torch.tensor(gen.stopped, device=score.device)
        if ppo.missing_eos_penalty:
            score = penalize_missing_eos(score, stopped, ppo.missing_eos_penalty)
        fresh = []
        for i, L in enumerate(lengths):
            P = int(s.attention_mask[i, :s.prompt_len].sum())
            fresh.append(Rollout(prompt_ids=s.sequences[i, s.prompt_len - P:s.prompt_len].cpu(),
                                 response_ids=s.sequences[i, s.prompt_len:s.prompt_len + L].cpu(),
                                 log_probs=None, values=None, advantages=None, returns=None,  # type: ignore[arg-type]
                                 score=float(score[i]), passed=verdicts[i]))
        # π_old, π_ref and V in exactly the micro-batches (and so the padded layout) ppo_train will use: bf16
        # kernels are not batch-invariant, and a layout change alone moved π/π_old by ~2% on SmolLM2.
        for m0 in range(0, len(fresh), ppo.micro_train_batch_size):
            part = fresh[m0:m0 + ppo.micro_train_batch_size]
            b = collate_rollouts(part, pad, device)
            seq, attn, mask = b["sequences"], b["attention_mask"], b["action_mask"]
            n = mask.size(1)
            with forward_autocast(params, device):
                logp, ent = response_log_probs(actor, seq, attn, n, with_entropy=True)
                ref_logp, _ = response_log_probs(models.ref, seq, attn, n)
                values = (response_values(critic, seq, attn, n).float() if critic is not None
                          else torch.zeros_like(logp))
            part_score = score[m0:m0 + len(part)]
            kl = compute_approx_kl(logp, ref_logp, mask, ppo.kl_estimator)
            if group:  # advantages need every sample of a prompt: computed after the loop
                adv = ret = torch.zeros_like(kl)
            else:
                rewards = compute_reward(part_score, kl_coef, kl, mask, tuple(ppo.reward_clip_range))
                adv, ret = get_advantages_and_returns(values, rewards, mask, ppo.gamma, ppo.lambd)
                adv = inject_nan("ppo.advantages", adv, round=where.round, step=where.step)  # fault-injection hook
                check_finite(adv, "advantages", where)
                check_finite(ret, "returns", where)
            micro_id = n_micro
            n_micro += 1
            for i, r in enumerate(part):
                L = r.response_ids.numel()
                r.log_probs, r.values = logp[i, :L].float().cpu(), values[i, :L].cpu()
                r.advantages, r.returns, r.micro = adv[i, :L].cpu(), ret[i, :L].cpu(), micro_id
                kls.append(kl[i, :L].cpu())
            acc["kl"] += masked_mean(kl, mask, dim=-1).tolist()
            acc["entropy"] += masked_mean(ent, mask, dim=-1).tolist()
        rollouts += fresh
        t3 = time.perf_counter()
        clock["rollout"] += t1 - t0
        clock["reward"] += t2 - t1
        clock["forward"] += t3 - t2
        acc["reward"] += score.tolist()
        acc["response_length"] += [float(x) for x in lengths]
        acc["stopped"] += stopped.float().tolist()
        acc["pass"] += [float(v) for v in verdicts if v is not None]
    if group:
        group_advantages(rollouts, kls, ppo.n_samples_per_prompt, kl_coef, params, where)
    actor.train()
    if critic is not None:
        critic.train()
    stats = {k if k != "pass" else "pass_rate": (sum(v) / len(v) if v else float("nan")) for k, v in acc.items()}
    # Does the reward follow the verifier on the very samples PPO learns from? (0.5: no; NaN: all pass or all fail)
    from gapo.train.reward import roc_auc, within_group_auc

    checked = [(r.score, float(r.passed), i // ppo.n_samples_per_prompt) for i, r in enumerate(rollouts)
               if r.passed is not None]
    stats["rm_verifier_auc"] = roc_auc([c[0] for c in checked], [c[1] for c in checked]) if checked else float("nan")
    # ...and among the answers to one prompt, the only ordering group advantages use (rollouts of a prompt are
    # consecutive; NaN with one sample per prompt)
    stats["rm_verifier_auc_within"] = within_group_auc([c[0] for c in checked], [c[1] for c in checked],
                                                       [c[2] for c in checked])
    stats.update({f"timing/{k}_s": round(v, 3) for k, v in clock.items()})
    return rollouts, stats


def group_advantages(rollouts: list[Rollout], kls: list[torch.Tensor], group_size: int, kl_coef: float,
                     params: Params, where: Where) -> None:
    """Critic-free advantages (RLOO, Ahmadian et al. 2024): each sample's clipped score minus the mean score of the
    OTHER samples of its prompt, then the per-token KL penalty as in GAE's rewards, summed to go (γ = ppo.gamma,
    λ = 1, V = 0). The rollouts of one prompt are consecutive (make_experience repeats each prompt)."""
    from gapo.train.losses import group_relative_scores, pad_right

    ppo = params.ppo
    scores = torch.tensor([r.score for r in rollouts]).clamp(*ppo.reward_clip_range)
    centred = group_relative_scores(scores, group_size)
    kl, mask = pad_right(kls)
    rewards = compute_reward(centred, kl_coef, kl, mask)
    adv, _ = get_advantages_and_returns(torch.zeros_like(kl), rewards, mask, ppo.gamma, 1.0)
    adv = inject_nan("ppo.advantages", adv, round=where.round, step=where.step)  # fault-injection hook
    check_finite(adv, "advantages", where)
    for i, r in enumerate(rollouts):
        L = r.response_ids.numel()
        r.advantages = adv[i, :L].clone()
        r.returns = adv[i, :L].clone()


def whiten_advantages(rollouts: list[Rollout], eps: float = 1e-8) -> None:
    """Replace advantages by (A − mean)/std over every response token of the rollout batch, on all ranks together
    (OpenRLHF normalises the whole replay buffer; per-sequence whitening would blow up one-token answers)."""
    from gapo.train import engine as E

    flat = torch.cat([r.advantages for r in rollouts]).double()
    ones = torch.ones_like(flat)
    if E.world_size() == 1:
        out = masked_whiten(flat, ones, eps=eps)
    else:
        s, n = E.all_reduce_mean([float(flat.sum()), float(flat.numel())])
        mean = s / n
        (sq,) = E.all_reduce_mean([float(((flat - mean) ** 2).sum())])
        out = (flat - mean) / math.sqrt(sq / n + eps)
    offset = 0
    for r in rollouts:
        k = r.advantages.numel()
        r.advantages = out[offset:offset + k].float()
        offset += k


# ------------------------------------------------------------------------------------------ training
def collate_rollouts(rollouts: Sequence[Rollout], pad_id: int, device=None) -> dict:
    """Left-padded prompts + right-padded responses, exactly the layout the sampler produced."""
    B = len(rollouts)
    P = max(r.prompt_ids.numel() for r in rollouts)
    N = max(r.response_ids.numel() for r in rollouts)
    seq = torch.full((B, P + N), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + N), dtype=torch.long)
    mask = torch.zeros((B, N))
    per_token = {k: torch.zeros((B, N)) for k in ("log_probs", "values", "advantages", "returns")}
    for i, r in enumerate(rollouts):
        p, n = r.prompt_ids.numel(), r.response_ids.numel()
        seq[i, P - p:P] = r.prompt_ids
        seq[i, P:P + n] = r.response_ids
        attn[i, P - p:P + n] = 1
        mask[i, :n] = 1
        for k in per_token:
            if getattr(r, k) is not None:  # None while make_experience is still scoring the rollout
                per_token[k][i, :n] = getattr(r, k)
    out = {"sequences": seq, "attention_mask": attn, "action_mask": mask, **per_token}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def ppo_train(models: PPOModels, rollouts: list[Rollout], params: Params, where: Where, seed: int) -> dict:
    """`max_epochs` passes over the rollouts; each minibatch of `train_batch_size` is one optimizer step of the
    actor and one of the critic. `where.step` counts optimizer steps (it is advanced in place)."""
    from tqdm import tqdm

    from gapo.models.prompting import pad_token_id
    from gapo.train import engine as E

    ppo = params.ppo
    world = E.world_size()
    per_rank = ppo.train_batch_size // world
    pad = pad_token_id(models.tokenizer)
    device = models.device
    rng = random.Random(seed)
    sums: dict[str, float] = {}
    n_micro = 0
    # The micro-batches are the ones make_experience scored π_old in (same rows, same padding): before the first
    # update the ratio is then exactly 1. Their ORDER is shuffled every epoch; a minibatch (one optimizer step) is
    # `train_batch_size / micro_train_batch_size` consecutive micro-batches of that order.
    blocks: dict[int, list[int]] = {}
    for i, r in enumerate(rollouts):
        blocks.setdefault(r.micro if r.micro >= 0 else i // ppo.micro_train_batch_size, []).append(i)
    micro_batches = list(blocks.values())
    per_step = max(1, per_rank // ppo.micro_train_batch_size)
    n_steps = ppo.max_epochs * math.ceil(len(micro_batches) / per_step)
    bar = tqdm(total=n_steps, desc=f"{where.stage} train", disable=bars_off(E.is_main()), dynamic_ncols=True, leave=False)
    models.actor.train()
    if models.critic is not None:
        models.critic.train()
    first_ratio_dev = None
    for _ in range(ppo.max_epochs):
        order = list(range(len(micro_batches)))
        rng.shuffle(order)
        for mb in range(0, len(order), per_step):
            where.step += 1
            for block in order[mb:mb + per_step]:
                batch = collate_rollouts([rollouts[i] for i in micro_batches[block]], pad, device)
                seq, attn, mask = batch["sequences"], batch["attention_mask"], batch["action_mask"]
                n = mask.size(1)
                # actor: clipped surrogate against π_old (the released code's PPO, not the paper's L_G, §9 item 6)
                with forward_autocast(params, device):
                    logp, ent = response_log_probs(models.actor, seq, attn, n, with_entropy=True)
                if first_ratio_dev is None:  # before any update π = π_old: how far the bf16 forward drifts
                    first_ratio_dev = float(masked_mean((logp.detach() - batch["log_probs"]).exp().sub(1).abs(), mask))
                pl, pstats = policy_loss(logp, batch["log_probs"], batch["advantages"], mask, ppo.eps_clip)
                pl = inject_nan("ppo.policy_loss", pl, round=where.round, step=where.step)  # fault-injection hook
                check_finite(pl, "policy loss", where)
                models.actor.backward(pl)
                models.actor.step()
                # critic: clipped value loss towards the GAE returns (the paper's L_V is the unclipped MSE)
                vl = torch.zeros(())
                if models.critic is not None:
                    with forward_autocast(params, device):
                        values = response_values(models.critic, seq, attn, n).float()
                    vl = value_loss(values, batch["values"], batch["returns"], mask, ppo.value_clip)
                    check_finite(vl, "value loss", where)
                    models.critic.backward(vl)
                    models.critic.step()
                for k, v in (("policy_loss", pl.item()), ("value_loss", vl.item()),
                             ("clipfrac", pstats["clipfrac"]), ("ppo_kl", pstats["ppo_kl"]),
                             ("train_entropy", float(masked_mean(ent, mask)))):
                    sums[k] = sums.get(k, 0.0) + v
                n_micro += 1
            bar.update(1)
            bar.set_postfix(pl=f"{sums['policy_loss'] / n_micro:.3f}", vl=f"{sums['value_loss'] / n_micro:.3f}")
    bar.close()
    means = {k: v / max(n_micro, 1) for k, v in sums.items()}
    means["ratio_dev_first"] = first_ratio_dev if first_ratio_dev is not None else float("nan")
    return dict(zip(means, E.all_reduce_mean(list(means.values()))))


@torch.no_grad()
def policy_loss_on(models: PPOModels, rollouts: list[Rollout], params: Params) -> float:
    """The clipped policy loss of the CURRENT actor on fixed rollouts (same reduction as training): what one PPO
    step must lower. Averaged over micro-batches of `micro_train_batch_size`."""
    from gapo.models.prompting import pad_token_id

    ppo = params.ppo
    actor = _module(models.actor)
    was = actor.training
    actor.eval()
    total, count = 0.0, 0
    for i in range(0, len(rollouts), ppo.micro_train_batch_size):
        chunk = rollouts[i:i + ppo.micro_train_batch_size]
        b = collate_rollouts(chunk, pad_token_id(models.tokenizer), models.device)
        with forward_autocast(params, models.device):
            logp, _ = response_log_probs(actor, b["sequences"], b["attention_mask"], b["action_mask"].size(1))
        loss, _ = policy_loss(logp, b["log_probs"], b["advantages"], b["action_mask"], ppo.eps_clip)
        total += float(loss) * len(chunk)
        count += len(chunk)
    actor.train(was)
    return total / max(count, 1)


def ppo_iteration(models: PPOModels, rows: Sequence[dict], params: Params, where: Where, seed: int) -> dict:
    """One PPO iteration (OpenRLHF "episode step"): experience on `rows` (this rank's share), whitening, training,
    KL-controller update. Returns the rollouts' stats (averaged over ranks) plus the training stats."""
    from gapo.train import engine as E

    t0 = time.perf_counter()
    kl_coef = models.kl_ctl.value
    rollouts, exp_stats = make_experience(models, rows, params, kl_coef, where)
    t_exp = time.perf_counter() - t0
    if params.ppo.advantage_whitening:
        whiten_advantages(rollouts)
    train_stats = ppo_train(models, rollouts, params, where, seed)
    keys = list(exp_stats)
    exp_stats = dict(zip(keys, E.all_reduce_mean([exp_stats[k] for k in keys])))
    models.kl_ctl.update(exp_stats["kl"], len(rollouts) * E.world_size())
    return {**exp_stats, **train_stats, "kl_coef": kl_coef, "experience_s": round(t_exp, 2),
            "train_s": round(time.perf_counter() - t0 - t_exp, 2)}


def episode_seed(seed: int, k: int, e: int) -> int:
    """The seed of episode e of round k (ppo_train's minibatch order): distinct for every (round, episode) while
    episodes_per_round < 1009."""
    return seed + 1009 * k + e


def run_ppo_phase(models: PPOModels, prompts: Sequence[dict], params: Params, k: int) -> tuple[list[dict], int]:
    """Round k's PPO: `ppo.episodes_per_round` iterations, each on the next `ppo.rollout_batch_size` prompts of
    round k's slice of `prompts` (stream "ppo", gapo.train.round_state.prompt_slice), this rank's share of them.
    Shared by GAPO's rounds and the PPO baseline, so both train on the same prompts with the same seeds. Returns
    the iterations' stats and the number of optimizer steps taken."""
    from gapo.train.round_state import prompt_slice

    where = Where(round=k, step=0)
    n = params.ppo.rollout_batch_size
    episode_prompts = prompt_slice(prompts, k, n * params.ppo.episodes_per_round, params.seed, "ppo")
    stats = [ppo_iteration(models, rank_share(episode_prompts[e * n:(e + 1) * n]), params, where,
                           seed=episode_seed(params.seed, k, e))
             for e in range(params.ppo.episodes_per_round)]
    return stats, where.step


# ------------------------------------------------------------------------------------------ building the models
def disable_dropout(model) -> None:
    """p = 0 in every dropout layer of the actor and critic: with dropout the first PPO forward would not reproduce
    π_old (ratio ≠ 1 before any update) and values would be noisy (TRL's `disable_dropout_in_model` does the same)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def build_ppo_models(params: Params, policy_dir, reference_dir, critic_model, reward, reward_tokenizer) -> PPOModels:
    """Actor (from `policy_dir`) and `critic_model` (a gapo.models.critic.Critic, or None for the critic-free
    group estimator) as DeepSpeed training engines, the frozen reference (`reference_dir`, the SFT policy), and the
    given RM (engine or module) + tokenizer. With `models.lora.enabled` the actor is `reference_dir` plus a new
    LoRA adapter (`policy_dir` is then ignored: a resumed adapter comes back with the engine state), and the
    reference is that same base with the adapter off."""
    from gapo.models.adapters import AdapterOff, add_lora
    from gapo.models.loading import load_policy
    from gapo.train import engine as E

    _, world = E.init_distributed()
    check_batch_sizes(params, world)
    eng_params = with_ppo_clipping(params)
    lora = params.models.lora.enabled
    actor_model, tok = load_policy(reference_dir if lora else policy_dir, params.models)
    if lora:
        actor_model = add_lora(actor_model, params.models.lora)
    disable_dropout(actor_model)
    big = 10**9  # constant LR: the schedule length is irrelevant (ppo_optim)
    actor = E.build_train_engine(actor_model, eng_params, ppo_optim(params, params.ppo.actor_learning_rate, world),
                                 big)
    critic = None
    if critic_model is not None:
        disable_dropout(critic_model)
        critic = E.build_train_engine(critic_model, eng_params,
                                      ppo_optim(params, params.ppo.critic_learning_rate, world), big)
    if lora:
        ref = AdapterOff(actor.module)
    else:
        ref_model, _ = load_policy(reference_dir, params.models, role="reference")
        ref = E.build_inference_engine(ref_model, params)
    kl_ctl = build_kl_controller(params.ppo.init_kl_coef, params.ppo.kl_target, params.ppo.kl_horizon)
    return PPOModels(actor=actor, critic=critic, ref=ref, reward=reward, tokenizer=tok,
                     reward_tokenizer=reward_tokenizer, kl_ctl=kl_ctl)


def rank_share(rows: Sequence[dict]) -> list[dict]:
    """This rank's prompts: every world-th row (a shared order, so the ranks never sample the same prompt)."""
    from gapo.train import engine as E

    return list(rows[E.rank()::E.world_size()])


# ------------------------------------------------------------------------------------------ standalone entry
def run_ppo_smoke(params: Params, ws, iterations: int = 1) -> dict:
    """PPO iterations against the fixed warm-up RM on the first prompts of data/ifeval/train.jsonl; saves
    nothing. Used by the multi-process test and for trying PPO knobs quickly."""
    from gapo import runtime
    from gapo.errors import DataError
    from gapo.io import read_jsonl
    from gapo.train import engine as E

    E.init_distributed()
    runtime.setup(params, seed_offset=3)
    path = ws.jsonl("ifeval", "train")
    if not path.exists():
        raise DataError(f"{path}: not found (run `gapo prepare` first)")
    rows = read_jsonl(path)
    from gapo.models.critic import build_critic
    from gapo.models.loading import load_reward_model, load_tokenizer

    critic = (build_critic(params, ws.sft, ws.rm_warmup, load_tokenizer(ws.sft, params.models))
              if params.ppo.advantage_estimator == "gae" else None)
    rm, rm_tok = load_reward_model(ws.rm_warmup, params.models)
    models = build_ppo_models(params, ws.sft, ws.sft, critic, E.build_inference_engine(rm, params), rm_tok)
    n = params.ppo.rollout_batch_size
    where = Where(stage="ppo")
    out = []
    for it in range(iterations):
        batch = rows[(it * n) % len(rows):][:n]
        out.append(ppo_iteration(models, rank_share(batch), params, where, seed=params.seed + it))
    return {"iterations": iterations, "steps": where.step, "world_size": E.world_size(), "last": out[-1]}
