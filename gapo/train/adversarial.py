"""GAPO's adversarial phase: the GAN / policy-optimisation rounds, as one recipe that reads top to bottom.

Starts from checkpoints/sft (generator, also the frozen PPO reference) and checkpoints/rm_warmup (discriminator).
For round k = 1..R (`adversarial.rounds`):

  (a) sample the current generator on a fresh slice of training prompts (data/ifeval/train.jsonl,
      `adversarial.prompts_per_round`);
  (b) build the round's RM set: EVERY sample, labelled 0 (the paper's y_gen = 0), plus preference rows
      (data/rm/train.jsonl) so that samples are `fake_ratio` of the negatives and the labels are balanced. The
      released code's `mix_cls_dataset` adds no sample at all with pair data and ratio 0.5 (arXiv 2503.20194,
      §8 bug 8); `build_rm_round_set` adds them by construction and tests/train/test_adversarial.py checks it;
  (c) train the RM on that set, continuing from round k−1 (weights AND optimizer state; the released code never
      trains it after warm-up, §8 bug 2);
  (d) run PPO (gapo.train.ppo) against the updated RM, `ppo.episodes_per_round` iterations;
  (e) checkpoint policy, critic, RM, optimizer states, RNG and the round index in checkpoints/rounds/round_NNN/,
      `round.json` last: a rerun resumes after the last completed round.

Health metrics every round (and for round 0 = SFT policy + warm-up RM), on samples of the round's generator for
held-out prompts (data/ifeval/validation.jsonl, `adversarial.eval_prompts`), which no RM has trained on: RM
accuracy/AUC on those fresh fakes vs held-out positives (data/rm/validation.jsonl), the generator's fool rate,
mean reward, KL to the reference, entropy, the verifier pass rate (IFEval strict, gapo.data.constraints) and
hack_gap = mean RM probability − verifier pass rate. Written to metrics/adversarial.json (last round + per-round
list) and plots/adversarial.csv (one row per round) after every round, so `--round K` runs (one Prefect task per
round) keep both files current. At the end, checkpoints/final/{policy,reward}.

`method: ppo` runs the same rounds without (a)–(c): PPO against the fixed warm-up RM, the paper's PPO baseline.

`run_round` composes the steps; the pieces live in their own modules: sampling and decoding in gapo.train.rollout,
the PPO phase (episodes, seeds) in gapo.train.ppo.run_ppo_phase, prompt slices, fingerprints, RNG state and
round.json in gapo.train.round_state, the health metrics, round columns and output files in
gapo.train.round_metrics.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from gapo.config import ConfigError, Params
from gapo.paths import Workspace
from gapo.runtime import bars_off
from gapo.train.round_metrics import (HEADLINE, PhaseClock, health_metrics, ppo_phase_record, ppo_timings,
                                      write_outputs)
from gapo.train.round_state import (BASELINE_FILE, ROUND_FILE, completed_rounds, fingerprint, load_rng, prompt_slice,
                                    read_round, rng_file, save_rng, write_round_file)


# ============================================================================================ (a) fakes
def gather_rows(rows: list[dict]) -> list[dict]:
    """Concatenate every rank's rows in rank order (identity in one process)."""
    from gapo.train import engine as E

    if E.world_size() == 1:
        return rows
    import torch.distributed as dist

    parts: list[Any] = [None] * E.world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def generate_fakes(actor, tokenizer, rows: Sequence[dict], params: Params, k: int) -> list[dict]:
    """The generator's responses to `rows` as RM rows (label 0) with the verifier's verdict (`passed`). Sampled like
    the PPO rollouts by default (`adversarial.fake_sampling`), so the RM sees the distribution PPO is optimising."""
    from gapo.train.ppo import verifier_verdicts
    from gapo.train.rollout import sample_in_batches

    greedy = params.adversarial.fake_sampling == "greedy"
    out = []
    for chunk, gen in sample_in_batches(actor, rows, tokenizer, params, desc=f"round {k} fakes", greedy=greedy):
        for r, text, passed in zip(chunk, gen.texts, verifier_verdicts(chunk, gen.texts)):
            out.append({"key": r.get("key"), "prompt": r["prompt"], "response": text, "label": 0, "passed": passed,
                        "instruction_id_list": r.get("instruction_id_list"), "kwargs": r.get("kwargs"), "round": k})
    return out


def sample_fakes(players: Players, params: Params, k: int) -> list[dict]:
    """(a) the current generator answers round k's fresh training prompts (every rank its share; all rows
    gathered on every rank)."""
    from gapo.train.ppo import rank_share, rollout_policy

    prompts = prompt_slice(players.train_prompts, k, params.adversarial.prompts_per_round, params.seed, "fakes")
    decoder = rollout_policy(players.ppo, params)  # bf16 copy of the generator (the actor itself without autocast)
    return gather_rows(generate_fakes(decoder, players.ppo.tokenizer, rank_share(prompts), params, k))


# ============================================================================================ (b) RM set, (c) RM update
def build_rm_round_set(pref_rows: Sequence[dict], fakes: Sequence[dict], fake_ratio: float, n_pairs_if_no_fakes: int,
                       seed: int, fake_labels: str = "gan") -> list[dict]:
    """The RM training set of one round.

    - every fake (generator sample) is in the set: nothing is subsampled away. Its label is 0 with
      `fake_labels="gan"` (the paper's y_gen = 0); with `"verifier"` it is the sample's IFEval verdict (field
      `passed`): 1 if it satisfies every constraint of its prompt, else 0;
    - each fake is paired with the reference response of the same prompt (label 1, same `key`), so a batch holds
      "real vs generated for this prompt", the GAN contrast;
    - preferential-prompt pairs (accepted 1 / rejected 0, same response) fill the rest so that fakes are
      `fake_ratio` of the negatives: with F fakes, round(F·(1−r)/r) pairs; the labels are then balanced;
    - with `fake_ratio` 0 (or no fakes) the set is `n_pairs_if_no_fakes` preference pairs.
    """
    rng = random.Random(seed)
    positives = {r["prompt"]: r for r in pref_rows if int(r["label"]) == 1}
    pairs: dict[Any, list[dict]] = {}
    for r in pref_rows:
        pairs.setdefault(r.get("key"), []).append(r)
    complete = [v for v in pairs.values() if sorted(int(x["label"]) for x in v) == [0, 1]]
    out: list[dict] = []
    used_keys = set()
    for f in fakes:
        ref = positives.get(f["prompt"])
        if ref is None:  # no reference for this prompt (user prompts): any positive keeps the labels balanced
            ref = rng.choice(list(positives.values()))
        out.append({**ref, "source": "reference"})
        label = int(bool(f.get("passed"))) if fake_labels == "verifier" else 0
        out.append({**f, "key": ref.get("key"), "label": label, "source": "generator"})
        used_keys.add(ref.get("key"))
    if fakes and fake_ratio > 0:
        n_pairs = round(len(fakes) * (1 - fake_ratio) / fake_ratio)
    else:
        n_pairs = n_pairs_if_no_fakes
    candidates = [p for p in complete if p[0].get("key") not in used_keys] or complete
    rng.shuffle(candidates)
    for p in candidates[:n_pairs]:
        out.extend({**x, "source": "preference"} for x in p)
    rng.shuffle(out)
    return out


def rm_round_set(players: Players, fakes: list[dict], params: Params, k: int) -> list[dict]:
    """(b) every sample joins the RM set next to the reference answer for its prompt; labelled 0 (the paper) or by
    the verifier (`adversarial.fake_labels`, docs/method.md §9.4)."""
    adv = params.adversarial
    return build_rm_round_set(players.pref_rows, fakes if adv.fake_ratio > 0 else [], adv.fake_ratio,
                              adv.prompts_per_round, seed=params.seed + k, fake_labels=adv.fake_labels)


def update_discriminator(players: Players, rm_set: list[dict], fakes: list[dict], params: Params, k: int) -> dict:
    """(c) the RM learns to tell this round's samples from real answers, continuing from round k−1 (weights and
    optimizer state). Returns the round record's RM columns."""
    from gapo.train.reward import train_reward_model

    m = players.ppo
    _, curve = train_reward_model(m.reward, m.reward_tokenizer, rm_set, params,
                                  epochs=params.adversarial.rm_epochs_per_round, desc=f"round {k} rm",
                                  seed=params.seed + 31 * k)
    checked = [f["passed"] for f in fakes if f.get("passed") is not None]
    return dict(rm_loss=sum(c[1] for c in curve) / len(curve), rm_steps=len(curve),
                fakes_pass_rate=sum(checked) / len(checked) if checked else float("nan"),
                n_fakes_in_rm_set=sum(r.get("source") == "generator" for r in rm_set), rm_set_size=len(rm_set))


# ============================================================================================ health
def drift_from_reference(module, ref, samples, params: Params) -> tuple[list[float], list[float]]:
    """Per sampled response: mean per-token k1 KL of `module` to `ref` and mean entropy (nats/token)."""
    import torch

    from gapo.train import losses as L
    from gapo.train.ppo import forward_autocast, response_log_probs

    device = next(module.parameters()).device
    seq, attn = samples.sequences.to(device), samples.attention_mask.to(device)
    mask = samples.action_mask.to(device).float()
    n = mask.size(1)
    with torch.no_grad():
        was = module.training
        module.eval()
        with forward_autocast(params, device):
            logp, ent = response_log_probs(module, seq, attn, n, with_entropy=True)
            ref_logp = logp if ref is None else response_log_probs(ref, seq, attn, n)[0]
        module.train(was)
    kl = L.masked_mean(L.compute_approx_kl(logp, ref_logp, mask, "k1"), mask, dim=-1).tolist()
    return kl, L.masked_mean(ent, mask, dim=-1).tolist()


def health_seed(seed: int, k: int) -> int:
    """The sampling seed of round k's health samples: the same samples whether round k ran in this process or
    is re-measured later (baseline_health)."""
    return seed + 7919 * (k + 1)


def adversarial_health(actor, ref, reward, tokenizer, reward_tokenizer, eval_rows: Sequence[dict],
                       positives: Sequence[dict], pp_rows: Sequence[dict], params: Params, seed: int,
                       decoder=None) -> dict:
    """The per-round health of the game (gapo.train.round_metrics.health_metrics) on fresh samples of `actor` for
    held-out prompts, against held-out positives and preferential-prompt pairs (`pp_rows`).

    The sampling generator is seeded here, so the measurement never perturbs the training RNG stream. `decoder`
    (default: the actor) is the module that samples: the bf16 rollout copy when autocast is on.
    """
    import torch

    from gapo.train.ppo import verifier_verdicts
    from gapo.train.reward import evaluate_reward_model, rm_logits
    from gapo.train.rollout import sample_in_batches

    if not eval_rows:
        return {}
    module = getattr(actor, "module", actor)
    decoder = module if decoder is None else decoder
    gen = torch.Generator(device=next(module.parameters()).device)
    gen.manual_seed(seed)
    texts, kls, ents, lengths, stopped = [], [], [], [], []
    for _, g in sample_in_batches(decoder, eval_rows, tokenizer, params, desc="health samples", generator=gen):
        kl, ent = drift_from_reference(module, ref, g.samples, params)
        kls += kl
        ents += ent
        lengths += g.lengths
        stopped += g.stopped
        texts += g.texts
    # Greedy answers to the same prompts: a paired, sampling-noise-free view of the pass rate (what `evaluate`
    # measures); the sampled one above is what PPO and the RM see.
    greedy_texts = [t for _, g in sample_in_batches(decoder, eval_rows, tokenizer, params, desc="health greedy",
                                                     greedy=True, bar=False) for t in g.texts]
    greedy_verdicts = verifier_verdicts(eval_rows, greedy_texts)
    fake_logits = rm_logits(reward, reward_tokenizer, [r["prompt"] for r in eval_rows], texts,
                            params.reward.max_length)
    pos_logits = rm_logits(reward, reward_tokenizer, [r["prompt"] for r in positives],
                           [r["response"] for r in positives], params.reward.max_length)
    verdicts = verifier_verdicts(eval_rows, texts)
    pp = evaluate_reward_model(reward, reward_tokenizer, pp_rows, params) if pp_rows else {}
    out = health_metrics(fake_logits, pos_logits, verdicts, greedy_verdicts, kls, ents, lengths, stopped, pp,
                         params.reward.score)
    out["example"] = {"prompt": eval_rows[0]["prompt"][-300:], "response": texts[0][:600]}
    return out


# ============================================================================================ the players
@dataclass
class Players:
    """The models of the game and their engines, plus the data every round reads."""

    ppo: Any                      # gapo.train.ppo.PPOModels (actor, critic, ref, reward engine, tokenizers, β)
    train_prompts: list[dict]
    pref_rows: list[dict]
    eval_prompts: list[dict]
    eval_positives: list[dict]
    eval_pp: list[dict]
    curves: dict = field(default_factory=dict)


def load_players(params: Params, ws: Workspace, start_round: int) -> Players:
    """Models as of the end of round `start_round` (0 = SFT policy + warm-up RM, new critic) as DeepSpeed engines;
    optimizer states, RNG and β restored from that round's checkpoint."""
    from gapo.errors import DataError
    from gapo.io import read_jsonl
    from gapo.models.critic import build_critic, load_critic
    from gapo.models.loading import load_reward_model, load_tokenizer
    from gapo.train import engine as E
    from gapo.train.ppo import build_ppo_models
    from gapo.train.reward import load_rm_rows

    for p in (ws.sft, ws.rm_warmup):
        if not (p / "config.json").is_file():
            raise DataError(f"{p}: not found (run `gapo sft` and `gapo rm_warmup` first)")
    for p in (ws.jsonl("ifeval", "train"), ws.jsonl("rm", "train")):
        if not p.is_file():
            raise DataError(f"{p}: not found (run `gapo prepare` first)")
    rd = ws.round_dir(start_round) if start_round else None
    policy_dir, reward_dir = (rd / "policy", rd / "reward") if rd else (ws.sft, ws.rm_warmup)
    tok = load_tokenizer(ws.sft, params.models)
    critic = None  # the group estimator is critic-free
    if params.ppo.advantage_estimator == "gae":
        critic = load_critic(rd / "critic", params, tok) if rd else build_critic(params, ws.sft, ws.rm_warmup, tok)
    rm_model, rm_tok = load_reward_model(reward_dir, params.models)
    # The RM keeps one engine (and optimizer) over all rounds; constant LR for the same reason as PPO (ppo_optim).
    rm_lr = params.adversarial.rm_learning_rate or params.reward.optim.learning_rate
    rm_optim = params.reward.optim.model_copy(update={"warmup_ratio": 0.0, "min_lr_ratio": 1.0, "learning_rate": rm_lr})
    rm_engine = E.build_train_engine(rm_model, params, rm_optim, 10**9)
    models = build_ppo_models(params, policy_dir, ws.sft, critic, rm_engine, rm_tok)
    if rd:
        info = json.loads((rd / ROUND_FILE).read_text(encoding="utf-8"))
        for name, eng in (("actor", models.actor), ("critic", models.critic), ("reward", models.reward)):
            if eng is not None:
                E.load_engine_state(eng, rd / "state" / name)
        models.kl_ctl.load_state_dict(info["kl_ctl"])
        load_rng(rng_file(rd))
    val_ifeval = ws.jsonl("ifeval", "validation")
    val_rm = ws.jsonl("rm", "validation")
    n_eval = params.adversarial.eval_prompts
    eval_prompts = read_jsonl(val_ifeval)[:n_eval] if val_ifeval.is_file() and n_eval else []
    val_rows = load_rm_rows(val_rm) if val_rm.is_file() else []
    eval_pp = load_rm_rows(val_rm, limit=n_eval, seed=params.seed) if val_rm.is_file() and n_eval else []
    return Players(ppo=models, train_prompts=read_jsonl(ws.jsonl("ifeval", "train")),
                   pref_rows=load_rm_rows(ws.jsonl("rm", "train")), eval_prompts=eval_prompts,
                   eval_positives=[r for r in val_rows if int(r["label"]) == 1][:n_eval], eval_pp=eval_pp)


def baseline_health(params: Params, ws: Workspace, policy_dir: Optional[Path] = None, k: int = 0) -> dict:
    """Health of `policy_dir` (default: the SFT policy) as round k, without building training engines: round 0 for
    `rounds: 0`, or when the rounds are complete but the baseline record is missing; the baselines' rounds 0 and 1
    (gapo.train.baselines), so plots/adversarial.csv means the same for every method. The RM is the warm-up one."""
    from gapo.io import read_jsonl
    from gapo.models.loading import load_policy, load_reward_model
    from gapo.train import engine as E
    from gapo.train.reward import load_rm_rows

    policy_dir = Path(policy_dir or ws.sft)
    n = params.adversarial.eval_prompts
    val_ifeval, val_rm = ws.jsonl("ifeval", "validation"), ws.jsonl("rm", "validation")
    if not n or not val_ifeval.is_file():
        return {}
    policy, tok = load_policy(policy_dir, params.models)
    ref = None
    if policy_dir != ws.sft:  # KL to SFT for a trained policy
        ref, _ = load_policy(ws.sft, params.models, role="reference")
        ref = E.build_inference_engine(ref, params)
    rm, rm_tok = load_reward_model(ws.rm_warmup, params.models)
    policy, rm = E.build_inference_engine(policy, params), E.build_inference_engine(rm, params)
    val_rows = load_rm_rows(val_rm) if val_rm.is_file() else []
    from gapo.train.ppo import PPOModels, rollout_policy

    decoder = rollout_policy(PPOModels(actor=policy, critic=None, ref=ref, reward=rm, tokenizer=tok,
                                       reward_tokenizer=rm_tok), params)
    return adversarial_health(policy, ref, rm, tok, rm_tok, read_jsonl(val_ifeval)[:n],
                              [r for r in val_rows if int(r["label"]) == 1][:n],
                              load_rm_rows(val_rm, limit=n, seed=params.seed) if val_rm.is_file() else [],
                              params, seed=health_seed(params.seed, k), decoder=decoder)


def health_of(players: Players, params: Params, k: int) -> dict:
    m = players.ppo
    from gapo.train.ppo import rollout_policy

    return adversarial_health(m.actor, m.ref, m.reward, m.tokenizer, m.reward_tokenizer, players.eval_prompts,
                              players.eval_positives, players.eval_pp, params, seed=health_seed(params.seed, k),
                              decoder=rollout_policy(m, params))


# ============================================================================================ one round
def run_round(players: Players, params: Params, ws: Workspace, k: int, fp: str) -> dict:
    """Round k of the game: (a) sample fakes, checked by the verifier; (b) the RM set; (c) RM update; (d) PPO,
    experience then update per episode; health on held-out prompts; (e) checkpoint, round.json last."""
    from gapo.train.ppo import run_ppo_phase

    clock = PhaseClock()  # seconds per phase -> record["timing/<phase>_s"] (docs/benchmarks.md)
    record: dict[str, Any] = {"round": k}
    if params.method == "gapo":  # method ppo: the same rounds against the fixed warm-up RM
        with clock.phase("fakes"):
            fakes = sample_fakes(players, params, k)
            rm_set = rm_round_set(players, fakes, params, k)
        with clock.phase("rm_retrain"):
            record.update(update_discriminator(players, rm_set, fakes, params, k))
    ppo_stats, ppo_steps = run_ppo_phase(players.ppo, players.train_prompts, params, k)
    record.update(ppo_phase_record(ppo_stats, ppo_steps))
    clock.add(ppo_timings(ppo_stats))
    with clock.phase("eval"):
        record.update(health_of(players, params, k))
    record["seconds"] = round(clock.elapsed(), 1)
    record.update(clock.timings())
    save_round(players, ws, k, fp, record)
    return record


def save_round(players: Players, ws: Workspace, k: int, fp: str, record: dict) -> None:
    from gapo.train.engine import save_critic
    from gapo.train import engine as E

    m = players.ppo
    rd = ws.round_dir(k)
    if E.is_main() and rd.exists():
        shutil.rmtree(rd)  # a partial or stale round from an earlier run
    E.barrier()
    E.save_hf(m.actor, m.tokenizer, rd / "policy")
    if m.critic is not None:
        save_critic(m.critic, rd / "critic")
    E.save_hf(m.reward, m.reward_tokenizer, rd / "reward")
    for name, eng in (("actor", m.actor), ("critic", m.critic), ("reward", m.reward)):
        if eng is not None:
            E.save_engine_state(eng, rd / "state" / name, {"round": k})
    save_rng(rng_file(rd))
    E.barrier()
    if E.is_main():
        write_round_file(rd, record, fp, m.kl_ctl.state_dict())
        # Only the last complete round is ever resumed: drop the optimizer states of the one before (3 models'
        # Adam moments per round would otherwise pile up in DVC's cache).
        prev = ws.round_dir(k - 1) / "state"
        if k > 1 and prev.is_dir():
            shutil.rmtree(prev)
    E.barrier()


# ============================================================================================ outputs
def write_final(ws: Workspace, source_policy: Path, source_reward: Path, info: dict) -> None:
    from gapo.io import atomic_dir, write_json

    with atomic_dir(ws.final) as tmp:
        shutil.copytree(source_policy, tmp / "policy")
        shutil.copytree(source_reward, tmp / "reward")
        write_json(tmp / "final.json", info)


# ============================================================================================ the stage
def run_adversarial(params: Params, ws: Workspace, only_round: Optional[int] = None) -> dict:
    """Run the rounds that are not complete yet (all of them, or only `only_round`), then refresh the metrics and,
    once round R is complete, checkpoints/final. Rerunning a finished stage only rewrites metrics and final."""
    from tqdm import tqdm

    from gapo import runtime
    from gapo.io import read_json, write_json
    from gapo.train import engine as E

    if params.method not in ("gapo", "ppo"):
        raise ConfigError(f"method {params.method!r}: the adversarial stage trains method gapo (or its ppo "
                          "baseline); other methods have their own stage")
    R = params.adversarial.rounds
    if only_round is not None and not 1 <= only_round <= R:
        raise ConfigError(f"adversarial --round {only_round}: expected 1..{R} (adversarial.rounds = {R})")
    E.init_distributed()
    runtime.setup(params, seed_offset=4)
    fp = fingerprint(params, ws)
    done = completed_rounds(ws, fp)
    if only_round is not None and only_round > done + 1:
        raise ConfigError(f"adversarial --round {only_round}: round {done + 1} is not complete yet; run rounds in order")
    todo = [k for k in ([only_round] if only_round is not None else range(1, R + 1)) if k > done]
    baseline_file = ws.rounds / BASELINE_FILE
    baseline = read_json(baseline_file) if baseline_file.is_file() else None
    if baseline is not None and baseline.get("fingerprint") != fp:
        baseline = None
    ran: list[int] = []
    players = load_players(params, ws, start_round=done) if todo else None
    if baseline is None:
        # round 0: the SFT generator against the warm-up discriminator, measured before any adversarial training
        if players is not None and done == 0:
            baseline = {"round": 0, **health_of(players, params, 0)}
        else:
            baseline = {"round": 0, **baseline_health(params, ws)}
        if E.is_main():
            write_json(baseline_file, {**baseline, "fingerprint": fp})
    bar = tqdm(todo, desc="adversarial rounds", disable=bars_off(E.is_main()), dynamic_ncols=True)
    for k in bar:
        record = run_round(players, params, ws, k, fp)
        ran.append(k)
        if E.is_main():
            write_outputs(ws, baseline, [read_round(ws, j, fp) for j in range(1, k + 1)], R)
            bar.write(f"round {k}: " + ", ".join(f"{c}={record[c]:.3f}" for c in HEADLINE if c in record))
    bar.close()
    done = completed_rounds(ws, fp)
    rounds = [read_round(ws, j, fp) for j in range(1, done + 1)]
    metrics = write_outputs(ws, baseline, rounds, R) if E.is_main() else {}
    if done >= R and E.is_main():
        src = ws.round_dir(R) if R else None
        write_final(ws, src / "policy" if src else ws.sft, src / "reward" if src else ws.rm_warmup,
                    {"rounds": R, "method": params.method, "fingerprint": fp,
                     "policy_from": str(src / "policy" if src else ws.sft),
                     "reward_from": str(src / "reward" if src else ws.rm_warmup)})
    E.barrier()
    return {"rounds_run": ran, "rounds_completed": done, "rounds": R, "final": str(ws.final) if done >= R else None,
            **{k: metrics.get(k) for k in ("pass_rate_sft", "pass_rate_last", "rm_auc", "hack_gap", "kl")}}
