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
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from gapo.config import ConfigError, Params
from gapo.io import content_hash
from gapo.paths import Workspace
from gapo.runtime import bars_off

ROUND_FILE = "round.json"
HEADLINE = ("rm_auc", "fool_rate", "mean_reward", "kl", "verifier_pass_rate", "hack_gap")
BASELINE_FILE = "baseline.json"
CSV_COLUMNS = ("round", "rm_acc_fakes", "rm_auc", "fool_rate", "mean_reward", "kl", "entropy", "verifier_pass_rate",
               "hack_gap", "verifier_pass_rate_greedy", "rm_verifier_auc", "rm_acc", "rm_pp_acc", "rm_prob_fakes",
               "rm_prob_positives", "response_length", "rollout_reward", "rollout_pass_rate", "fakes_pass_rate",
               "policy_loss", "value_loss", "rm_loss", "n_fakes_in_rm_set", "rollout_rm_verifier_auc", "ratio_dev_first",
               "rollout_stopped", "eos_rate", "seconds")


# ============================================================================================ data for a round
def prompt_slice(rows: Sequence[dict], k: int, n: int, seed: int, stream: str) -> list[dict]:
    """Round k's `n` prompts from a seeded permutation of `rows` (one permutation per `stream`): consecutive rounds
    take consecutive, disjoint slices ("fresh" prompts), wrapping around only when the set is exhausted."""
    order = list(range(len(rows)))
    random.Random(f"{seed}/{stream}").shuffle(order)
    start = (k - 1) * n
    return [rows[order[(start + i) % len(order)]] for i in range(min(n, len(order)))]


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
    """(a) the generator's responses to `rows` as RM rows (label 0). Sampled like the PPO rollouts by default
    (`adversarial.fake_sampling`), so the RM sees the distribution PPO is optimising."""
    from tqdm import tqdm

    from gapo.models.prompting import decode_response, pad_token_id, stop_token_ids
    from gapo.train import engine as E
    from gapo.train.ppo import decode_threads, encode_prompts, verifier_verdicts
    from gapo.train.sampler import sample

    ppo = params.ppo
    stops, pad = stop_token_ids(tokenizer), pad_token_id(tokenizer)
    greedy = params.adversarial.fake_sampling == "greedy"
    out = []
    for s in tqdm(range(0, len(rows), ppo.micro_rollout_batch_size), desc=f"round {k} fakes",
                  disable=bars_off(E.is_main()), dynamic_ncols=True, leave=False):
        chunk = rows[s:s + ppo.micro_rollout_batch_size]
        with decode_threads(params.runtime.decode_threads):
            res = sample(actor, encode_prompts(chunk, tokenizer, ppo.prompt_max_len), ppo.generate_max_len, stops,
                         pad, greedy=greedy, temperature=ppo.temperature, top_p=ppo.top_p, top_k=ppo.top_k,
                         sync_ranks=True)
        texts = [decode_response(ids, tokenizer, stops) for ids in res.response_ids.tolist()]
        for r, text, passed in zip(chunk, texts, verifier_verdicts(chunk, texts)):
            out.append({"key": r.get("key"), "prompt": r["prompt"], "response": text, "label": 0, "passed": passed,
                        "instruction_id_list": r.get("instruction_id_list"), "kwargs": r.get("kwargs"), "round": k})
    return out


# ============================================================================================ health metrics
def adversarial_health(actor, ref, reward, tokenizer, reward_tokenizer, eval_rows: Sequence[dict],
                       positives: Sequence[dict], pp_rows: Sequence[dict], params: Params, seed: int,
                       decoder=None) -> dict:
    """The per-round health of the game, on fresh samples of `actor` for held-out prompts.

    rm_acc_fakes: share of fakes the RM rejects (p < 0.5); fool_rate = 1 − rm_acc_fakes; rm_acc / rm_auc: fakes
    vs held-out positives; rm_pp_acc: the RM on held-out preferential-prompt pairs (does it still read the
    constraints, or only "generated vs human"?); mean_reward: the PPO reward (reward.score) of the fakes; kl:
    mean per-token k1 KL of the actor to the reference on its samples (nats/token); entropy: nats/token;
    verifier_pass_rate: IFEval strict on the samples; hack_gap = mean RM probability − verifier pass rate
    (> 0: the RM pays for responses the verifier rejects).
    The sampling generator is seeded here, so the measurement never perturbs the training RNG stream. `decoder`
    (default: the actor) is the module that samples: the bf16 rollout copy when autocast is on.
    """
    import torch
    from tqdm import tqdm

    from gapo.models.prompting import decode_response, pad_token_id, stop_token_ids
    from gapo.train import engine as E
    from gapo.train import losses as L
    from gapo.train.ppo import decode_threads, encode_prompts, forward_autocast, response_log_probs, verifier_verdicts
    from gapo.train.reward import evaluate_reward_model, rm_logits, roc_auc
    from gapo.train.sampler import sample

    if not eval_rows:
        return {}
    ppo = params.ppo
    stops, pad = stop_token_ids(tokenizer), pad_token_id(tokenizer)
    module = getattr(actor, "module", actor)
    decoder = module if decoder is None else decoder
    device = next(module.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    texts, kls, ents, lengths, eos = [], [], [], [], []
    for s in tqdm(range(0, len(eval_rows), ppo.micro_rollout_batch_size), desc="health samples",
                  disable=bars_off(E.is_main()), dynamic_ncols=True, leave=False):
        chunk = eval_rows[s:s + ppo.micro_rollout_batch_size]
        with decode_threads(params.runtime.decode_threads):
            res = sample(decoder, encode_prompts(chunk, tokenizer, ppo.prompt_max_len), ppo.generate_max_len, stops,
                         pad, temperature=ppo.temperature, top_p=ppo.top_p, top_k=ppo.top_k, generator=gen,
                         sync_ranks=True)
        seq, attn = res.sequences.to(device), res.attention_mask.to(device)
        mask = res.action_mask.to(device).float()
        n = mask.size(1)
        with torch.no_grad():
            was = module.training
            module.eval()
            with forward_autocast(params, device):
                logp, ent = response_log_probs(module, seq, attn, n, with_entropy=True)
                ref_logp = logp if ref is None else response_log_probs(ref, seq, attn, n)[0]
            module.train(was)
        kls += L.masked_mean(L.compute_approx_kl(logp, ref_logp, mask, "k1"), mask, dim=-1).tolist()
        ents += L.masked_mean(ent, mask, dim=-1).tolist()
        lengths += mask.sum(-1).tolist()
        ids = res.response_ids.tolist()
        eos += [any(t in stops for t in row) for row in ids]
        texts += [decode_response(row, tokenizer, stops) for row in ids]
    # Greedy answers to the same prompts: a paired, sampling-noise-free view of the pass rate (what `evaluate`
    # measures); the sampled one above is what PPO and the RM see.
    greedy_texts = []
    for s in range(0, len(eval_rows), ppo.micro_rollout_batch_size):
        chunk = eval_rows[s:s + ppo.micro_rollout_batch_size]
        with decode_threads(params.runtime.decode_threads):
            res = sample(decoder, encode_prompts(chunk, tokenizer, ppo.prompt_max_len), ppo.generate_max_len, stops,
                         pad, greedy=True, sync_ranks=True)
        greedy_texts += [decode_response(row, tokenizer, stops) for row in res.response_ids.tolist()]
    greedy_verdicts = [v for v in verifier_verdicts(eval_rows, greedy_texts) if v is not None]
    fake_logits = rm_logits(reward, reward_tokenizer, [r["prompt"] for r in eval_rows], texts,
                            params.reward.max_length)
    pos_logits = rm_logits(reward, reward_tokenizer, [r["prompt"] for r in positives],
                           [r["response"] for r in positives], params.reward.max_length)
    fake_p, pos_p = fake_logits.sigmoid(), pos_logits.sigmoid()
    all_verdicts = verifier_verdicts(eval_rows, texts)
    verdicts = [v for v in all_verdicts if v is not None]
    pass_rate = sum(verdicts) / len(verdicts) if verdicts else float("nan")
    # Does the RM pay for what the verifier checks? AUC of the RM score at telling passing from failing samples
    # (0.5: the discriminator ignores constraint satisfaction; NaN when every sample passes or every one fails).
    checked = [(float(x), float(v)) for x, v in zip(fake_logits.tolist(), all_verdicts) if v is not None]
    rm_verifier_auc = roc_auc([c[0] for c in checked], [c[1] for c in checked]) if checked else float("nan")
    rm_acc_fakes = float((fake_p < 0.5).float().mean())
    scores = torch.cat([pos_logits, fake_logits]).tolist()
    labels = [1.0] * len(pos_logits) + [0.0] * len(fake_logits)
    correct = (pos_p >= 0.5).float().sum() + (fake_p < 0.5).float().sum()
    pp = evaluate_reward_model(reward, reward_tokenizer, pp_rows, params) if pp_rows else {}
    reward_values = fake_p if params.reward.score == "prob" else fake_logits
    out = {
        "rm_acc_fakes": rm_acc_fakes, "fool_rate": 1.0 - rm_acc_fakes,
        "rm_acc": float(correct) / len(labels), "rm_auc": roc_auc(scores, labels),
        "rm_pp_acc": pp.get("accuracy", float("nan")), "rm_pp_auc": pp.get("auc", float("nan")),
        "rm_prob_fakes": float(fake_p.mean()), "rm_prob_positives": float(pos_p.mean()) if len(pos_p) else float("nan"),
        "mean_reward": float(reward_values.mean()),
        "kl": sum(kls) / len(kls), "entropy": sum(ents) / len(ents),
        "verifier_pass_rate": pass_rate, "hack_gap": float(fake_p.mean()) - pass_rate,
        "rm_verifier_auc": rm_verifier_auc,
        "verifier_pass_rate_greedy": sum(greedy_verdicts) / len(greedy_verdicts) if greedy_verdicts else float("nan"),
        "response_length": sum(lengths) / len(lengths), "eos_rate": sum(eos) / len(eos),
        "n_eval": len(eval_rows),
    }
    out["example"] = {"prompt": eval_rows[0]["prompt"][-300:], "response": texts[0][:600]}
    return out


# ============================================================================================ checkpoints
def _md5(path: Path) -> str:
    if not path.exists():  # a missing input is the user's to fix: one line, not a traceback
        from gapo.errors import DataError

        raise DataError(f"{path}: not found (run `gapo prepare`, `gapo sft` and `gapo rm_warmup` first)")
    return content_hash(path, names=True, suffixes=(".safetensors", ".jsonl", ".json"))


# The code a round's result depends on (the modules this stage runs; sft.py and baselines.py only reach it through
# checkpoints, which are hashed as inputs). DVC reruns the stage when its code deps change and `persist: true`
# keeps the old rounds, so without this a fix to e.g. the PPO loss would resume rounds trained by the old code.
CODE_DEPS = ("gapo/train/adversarial.py", "gapo/train/ppo.py", "gapo/train/losses.py", "gapo/train/reward.py",
             "gapo/train/engine.py", "gapo/train/sampler.py", "gapo/models", "gapo/data/constraints.py",
             "gapo/data/catalog.py", "gapo/data/ifeval_checkers.py")


def code_digest(root: Optional[Path] = None) -> str:
    """md5 over the .py files of CODE_DEPS (path + content, sorted), relative to the repository root."""
    root = root or Path(__file__).resolve().parents[2]
    h = hashlib.md5()
    for dep in CODE_DEPS:
        base = root / dep
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(params: Params, ws: Workspace) -> str:
    """What a completed round depends on: every knob that changes training (all but `adversarial.rounds`, so adding
    rounds resumes), the inputs' content and the code. A round with another fingerprint is stale and is redone."""
    adv = params.adversarial.model_dump(mode="json")
    adv.pop("rounds")
    ds = params.deepspeed.model_dump(mode="json")
    for k in ("launcher", "hostfile", "master_port"):
        ds.pop(k)
    from gapo.train import engine as E

    tree = {"seed": params.seed, "method": params.method, "ppo": params.ppo.model_dump(mode="json"), "adversarial": adv,
            "reward": params.reward.model_dump(mode="json"), "deepspeed": ds, "world": E.world_size(),
            "models": {**{k: getattr(params.models, k) for k in ("dtype", "critic_init", "gradient_checkpointing",
                                                                  "reward_autocast")},
                       "lora": params.models.lora.model_dump(mode="json")},
            "code": code_digest(),
            "inputs": {name: _md5(p) for name, p in (("sft", ws.sft), ("rm_warmup", ws.rm_warmup),
                                                     ("ifeval_train", ws.jsonl("ifeval", "train")),
                                                     ("rm_train", ws.jsonl("rm", "train")))}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def read_round(ws: Workspace, k: int, fp: str) -> Optional[dict]:
    f = ws.round_dir(k) / ROUND_FILE
    if not f.is_file():
        return None
    info = json.loads(f.read_text(encoding="utf-8"))
    return info if info.get("fingerprint") == fp else None


def completed_rounds(ws: Workspace, fp: str) -> int:
    """Length of the run of complete, current rounds 1..j (a stale or partial round ends it)."""
    k = 0
    while read_round(ws, k + 1, fp) is not None:
        k += 1
    return k


def save_rng(path: Path) -> None:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def load_rng(path: Path) -> None:
    import numpy as np
    import torch

    state = torch.load(path, weights_only=False)  # our own file, written by save_rng
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rd: Path) -> Path:
    from gapo.train import engine as E

    return rd / ("rng.pt" if E.rank() == 0 else f"rng.rank{E.rank()}.pt")


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
                              params, seed=params.seed + 7919 * (k + 1), decoder=decoder)


def health_of(players: Players, params: Params, k: int) -> dict:
    m = players.ppo
    from gapo.train.ppo import rollout_policy

    return adversarial_health(m.actor, m.ref, m.reward, m.tokenizer, m.reward_tokenizer, players.eval_prompts,
                              players.eval_positives, players.eval_pp, params, seed=params.seed + 7919 * (k + 1),
                              decoder=rollout_policy(m, params))


# ============================================================================================ one round
def run_round(players: Players, params: Params, ws: Workspace, k: int, fp: str) -> dict:
    """Round k of the game: (a) fakes, (b) RM set, (c) RM step, (d) PPO step, (e) checkpoint."""
    from gapo.train.ppo import Where, ppo_iteration, rank_share, rollout_policy
    from gapo.train.reward import train_reward_model

    adv, m = params.adversarial, players.ppo
    t0 = time.perf_counter()
    record: dict[str, Any] = {"round": k}
    clock: dict[str, float] = {}  # seconds per phase -> record["timing/<phase>_s"] (docs/benchmarks.md)
    if params.method == "gapo":
        # (a) the current generator answers fresh training prompts
        fake_prompts = prompt_slice(players.train_prompts, k, adv.prompts_per_round, params.seed, "fakes")
        decoder = rollout_policy(m, params)  # bf16 copy of the current generator (the actor itself without autocast)
        fakes = gather_rows(generate_fakes(decoder, m.tokenizer, rank_share(fake_prompts), params, k))
        # (b) every sample joins the RM set, next to the reference answer for its prompt; labelled 0 (the paper)
        # or by the verifier (adversarial.fake_labels, docs/method.md §9.4)
        rm_set = build_rm_round_set(players.pref_rows, fakes if adv.fake_ratio > 0 else [], adv.fake_ratio,
                                    adv.prompts_per_round, seed=params.seed + k, fake_labels=adv.fake_labels)
        clock["fakes"] = time.perf_counter() - t0
        # (c) the discriminator learns to tell this round's samples from real answers, continuing from k−1
        _, curve = train_reward_model(m.reward, m.reward_tokenizer, rm_set, params, epochs=adv.rm_epochs_per_round,
                                      desc=f"round {k} rm", seed=params.seed + 31 * k)
        checked = [f["passed"] for f in fakes if f.get("passed") is not None]
        record.update(rm_loss=sum(c[1] for c in curve) / len(curve), rm_steps=len(curve),
                      fakes_pass_rate=sum(checked) / len(checked) if checked else float("nan"),
                      n_fakes_in_rm_set=sum(r.get("source") == "generator" for r in rm_set), rm_set_size=len(rm_set))
        clock["rm_retrain"] = time.perf_counter() - t0 - clock["fakes"]
    # (d) the generator is optimised by PPO against the updated discriminator
    where = Where(round=k, step=0)
    ppo_stats = []
    n = params.ppo.rollout_batch_size
    episode_prompts = prompt_slice(players.train_prompts, k, n * params.ppo.episodes_per_round, params.seed, "ppo")
    for e in range(params.ppo.episodes_per_round):
        rows = rank_share(episode_prompts[e * n:(e + 1) * n])
        ppo_stats.append(ppo_iteration(m, rows, params, where, seed=params.seed + 1009 * k + e))
    last = ppo_stats[-1]
    record.update(rollout_reward=sum(s["reward"] for s in ppo_stats) / len(ppo_stats),
                  rollout_rm_verifier_auc=_nanmean([s["rm_verifier_auc"] for s in ppo_stats]),
                  ratio_dev_first=max(s["ratio_dev_first"] for s in ppo_stats),
                  rollout_pass_rate=sum(s["pass_rate"] for s in ppo_stats) / len(ppo_stats),
                  rollout_stopped=sum(s["stopped"] for s in ppo_stats) / len(ppo_stats),
                  rollout_kl=last["kl"], policy_loss=last["policy_loss"], value_loss=last["value_loss"],
                  clipfrac=last["clipfrac"], kl_coef=last["kl_coef"], ppo_steps=where.step, ppo=ppo_stats)
    for phase, key in (("rollout", "timing/rollout_s"), ("ppo_forward", "timing/forward_s"),
                       ("reward", "timing/reward_s"), ("ppo_update", "train_s")):
        clock[phase] = sum(s.get(key, 0.0) for s in ppo_stats)
    t_eval = time.perf_counter()
    # health of the game after this round (fresh samples, held-out prompts)
    record.update(health_of(players, params, k))
    clock["eval"] = time.perf_counter() - t_eval
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record.update({f"timing/{p}_s": round(v, 3) for p, v in clock.items()})
    # (e) checkpoint; round.json is written last and marks the round complete
    save_round(players, ws, k, fp, record)
    return record


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def save_round(players: Players, ws: Workspace, k: int, fp: str, record: dict) -> None:
    from gapo.io import write_json
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
        write_json(rd / ROUND_FILE, {**record, "fingerprint": fp, "kl_ctl": m.kl_ctl.state_dict(),
                                     "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        # Only the last complete round is ever resumed: drop the optimizer states of the one before (3 models'
        # Adam moments per round would otherwise pile up in DVC's cache).
        prev = ws.round_dir(k - 1) / "state"
        if k > 1 and prev.is_dir():
            shutil.rmtree(prev)
    E.barrier()


# ============================================================================================ outputs
def _nan_to_none(obj: Any) -> Any:
    """NaN (an undefined AUC, a pass rate without checkable prompts) is not valid JSON: write null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _flat(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_outputs(ws: Workspace, baseline: dict, rounds: list[dict], total_rounds: int) -> dict:
    """metrics/adversarial.json (the last round's numbers at the top level, SFT→last deltas, the per-round list)
    and plots/adversarial.csv (round 0 = SFT policy + warm-up RM, then one row per completed round)."""
    from gapo.io import atomic_file, write_json

    per_round = [_flat(baseline)] + [_flat(r) for r in rounds]
    last = per_round[-1]
    first_pass, last_pass = per_round[0].get("verifier_pass_rate"), last.get("verifier_pass_rate")
    metrics = {**last, "rounds_completed": len(rounds), "rounds": total_rounds,
               "pass_rate_sft": first_pass, "pass_rate_last": last_pass,
               "pass_rate_delta": (last_pass - first_pass) if first_pass is not None and last_pass is not None else None,
               "per_round": per_round}
    metrics = _nan_to_none(metrics)
    write_json(ws.metrics_file("adversarial"), metrics)
    ws.plots.mkdir(parents=True, exist_ok=True)

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return str(int(v)) if isinstance(v, int) else f"{v:.6g}"

    with atomic_file(ws.plots / "adversarial.csv") as fh:
        fh.write(",".join(CSV_COLUMNS) + "\n")
        for r in per_round:
            fh.write(",".join(cell(r.get(c)) for c in CSV_COLUMNS) + "\n")
    return metrics


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
