"""Encoder reward model: BCE training on (prompt, response, label) rows, evaluation, and scoring for PPO.

API
- `load_rm_rows(path, limit=0, seed=0)` -> list[dict]    data/rm/*.jsonl rows (prompt, response, label, key, ...);
      `limit` samples whole keys, so an accepted/rejected pair stays together
- `train_reward_model(model_or_engine, tokenizer, rows, params, *, epochs=1.0, desc="rm", seed=0)`
      -> (engine, curve)   BCE-with-logits; a module gets a fresh engine (schedule over this call's steps), an
      engine continues with its optimizer/scheduler state (per-round retraining in the adversarial loop).
      `curve` = [(step, loss, lr)].
- `evaluate_reward_model(model, tokenizer, rows, params)` -> {loss, accuracy, auc, mean_prob_pos, mean_prob_neg, n}
- `rm_logits(model, tokenizer, prompts, responses, max_length, batch_size=32)` -> FloatTensor [N] (no grad)
- `rm_score(model, tokenizer, prompts, responses, params, batch_size=32)` -> FloatTensor [N]:
      sigmoid probability (`reward.score: prob`, the paper's R(c, t) in (0, 1)) or the raw logit (`logit`, as
      OpenRLHF). Responses are TEXT (decode policy ids first): the RM has its own tokenizer.
- `roc_auc(scores, labels)` -> float     Mann-Whitney U with tied ranks averaged
- `pair_breakdown(rows, scores, threshold=0.0)` -> {overall, by_perturbation, by_instruction,
      by_perturbation_instruction, skipped_keys}: row and pair accuracy per PP perturbation kind (modify/insert)
      and per perturbed constraint type, derived from the two RM rows of each key
- `batches_by_key(rows, lengths, batch_size, seed)` -> list[list[int]]   the training order: rows sharing a `key`
      in one micro-batch (gapo.models.reward_model.collate pads each)
- `run_rm_warmup(params, ws)`   the `rm_warmup` stage's recipe in this process (`gapo rm_warmup` relaunches first
      under torchrun/deepspeed if asked: gapo.stages)

Labels follow the paper: the accepted (prompt, response) pair is 1, the same response under a rejected
(perturbed-constraint) prompt is 0, and in the adversarial rounds generator samples are 0. What is specific to the
encoder RM (its encoding, the logit it reads, its BCE loss, the stored prompt layout and frozen layers) is
gapo.models.reward_model.EncoderRM; scoring dispatches on the loaded model's kind, so the PPO baseline's decoder RM
is scored by the same `rm_logits`.
"""
from __future__ import annotations

import math
import random
import time
from typing import Optional, Sequence

from gapo.config import Params
from gapo.models.reward_model import ENCODER, collate, encode_rows, keeps_facts, kind_of
from gapo.paths import Workspace
from gapo.runtime import bars_off


# ------------------------------------------------------------------------------------------ data
def load_rm_rows(path, limit: int = 0, seed: int = 0) -> list[dict]:
    from gapo.errors import DataError
    from gapo.io import read_jsonl

    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise DataError(f"{path} line {i}: expected string fields 'prompt' and 'response'")
        if r.get("label") not in (0, 1, True, False):
            raise DataError(f"{path} line {i}: field 'label' must be 0 or 1, got {r.get('label')!r}")
    if limit and len(rows) > limit:
        rows = take_by_key(rows, limit, seed)
    return rows


def take_by_key(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """At least `n` rows (0: none) as whole key groups (a pair's two rows stay together), in a seeded key order."""
    groups: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("key", i)), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    picked: list[dict] = []
    for k in keys:
        if len(picked) >= n:
            break
        picked.extend(groups[k])
    return picked


def mix_by_key(pp: Sequence[dict], pr: Sequence[dict], total: int, pr_fraction: float, seed: int) -> list[dict]:
    """`total` warm-up rows (0: as many as `pp` holds), a `pr_fraction` share of them from `pr`, both sampled as
    whole pairs. PR keys are prefixed so that a PR pair never shares a micro-batch group with the PP pair of the
    same response."""
    total = total or len(pp)
    n_pr = round(total * pr_fraction)
    pr = [dict(r, key=f"pr:{r.get('key', i)}") for i, r in enumerate(pr)]
    return take_by_key(pp, total - n_pr, seed) + take_by_key(pr, n_pr, seed)


def warmup_rows(params: Params, ws: Workspace) -> list[dict]:
    """The warm-up's training rows: preferential-prompt pairs (data/rm), with `reward.pr_fraction` of them from the
    preferential-response pairs of data/pr. PPO's group advantages use only the RM's ordering of answers to one
    prompt, which PR pairs teach directly and PP pairs do not (docs/method.md, "The RM ranks prompts, not answers")."""
    from gapo.io import read_jsonl

    cfg = params.reward
    if cfg.pr_fraction == 0 or ws.rm_data != "rm":  # paradigm pr: data/rm_pr holds PR pairs already
        return load_rm_rows(ws.jsonl("rm", "train"), cfg.warmup_examples, seed=params.seed)
    from gapo.data.preferences import preference_pairs, rm_rows

    pp = load_rm_rows(ws.jsonl("rm", "train"))
    pr = rm_rows(preference_pairs(read_jsonl(ws.jsonl("pr", "train")), "pr"))
    return mix_by_key(pp, pr, cfg.warmup_examples, cfg.pr_fraction, params.seed)


def batches_by_key(rows: Sequence[dict], lengths: list[int], batch_size: int, seed: int, group: int = 16):
    """Batches that keep rows sharing a `key` (an accepted/rejected pair: same response, different constraints)
    together, so each step sees the contrast the RM must learn; lengths grouped inside windows to cut padding."""
    rng = random.Random(seed)
    units: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        units.setdefault(str(r.get("key", f"#{i}")), []).append(i)
    order = list(units.values())
    rng.shuffle(order)
    window = max(1, batch_size * group // 2)
    batches: list[list[int]] = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s:s + window], key=lambda u: max(lengths[i] for i in u))
        cur: list[int] = []
        for u in chunk:
            if cur and len(cur) + len(u) > batch_size:
                batches.append(cur)
                cur = []
            cur.extend(u)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------------------ metrics
def roc_auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2); NaN if one class is absent."""
    pairs = sorted(zip(scores, labels), key=lambda x: x[0])
    n_pos = sum(1 for _, y in pairs if y > 0.5)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # 1-based average rank of a tie block
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1] > 0.5)
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def within_group_auc(scores: Sequence[float], labels: Sequence[float], groups: Sequence[object]) -> float:
    """roc_auc restricted to pairs from the same group (answers to one prompt): the share of (positive, negative)
    pairs of a group that the scores order correctly, ties 1/2, pooled over groups; NaN without such a pair.
    Group-relative advantages subtract each prompt's mean score, so this, not the pooled AUC, is the part of the
    RM's signal that reaches PPO (docs/method.md, "The RM ranks prompts, not answers")."""
    by_group: dict[object, list[tuple[float, float]]] = {}
    for s, y, g in zip(scores, labels, groups):
        by_group.setdefault(g, []).append((float(s), float(y)))
    hits, pairs = 0.0, 0
    for members in by_group.values():
        pos = [s for s, y in members if y > 0.5]
        neg = [s for s, y in members if y <= 0.5]
        for a in pos:
            for b in neg:
                hits += 1.0 if a > b else 0.5 if a == b else 0.0
        pairs += len(pos) * len(neg)
    return hits / pairs if pairs else float("nan")


def _pair_perturbation(chosen: dict, rejected: dict) -> tuple[str, str]:
    """(kind, instruction) of a preferential-prompt pair, from its two RM rows alone: `insert` when the rejected
    prompt has the chosen one's constraints plus one (the instruction is the added one), else `modify` (the first
    chosen instruction whose id or kwargs differ, i.e. PP's `perturbed_instruction_id`)."""
    c_ids, r_ids = list(chosen.get("instruction_id_list") or []), list(rejected.get("instruction_id_list") or [])
    c_kw, r_kw = list(chosen.get("kwargs") or [{}] * len(c_ids)), list(rejected.get("kwargs") or [{}] * len(r_ids))
    if len(r_ids) == len(c_ids) + 1:
        for i in range(len(r_ids)):
            if r_ids[:i] + r_ids[i + 1:] == c_ids and r_kw[:i] + r_kw[i + 1:] == c_kw:
                return "insert", r_ids[i]
    for i, (cid, ckw) in enumerate(zip(c_ids, c_kw)):
        if i >= len(r_ids) or r_ids[i] != cid or (r_kw[i] if i < len(r_kw) else {}) != ckw:
            return "modify", cid
    return "modify", c_ids[-1] if c_ids else "?"


def pair_breakdown(rows: Sequence[dict], scores: Sequence[float], threshold: float = 0.0) -> dict:
    """RM accuracy per perturbation kind and per perturbed constraint type on preferential-prompt rows.

    `rows` are data/rm rows (two per `key`: label 1 under the chosen prompt, 0 under the rejected one), `scores`
    their logits (or probabilities with threshold 0.5). Per group: `pairs`, `row_accuracy` (both rows classified
    at the threshold, the number `accuracy` averages) and `pair_accuracy` (chosen scored above rejected, ties 1/2).
    Keys without exactly one row of each label are skipped and counted in `skipped_keys`.
    Returns {overall, by_perturbation, by_instruction, by_perturbation_instruction ("kind:id"), skipped_keys}."""
    if len(rows) != len(scores):
        raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
    groups: dict[str, list[tuple[dict, float]]] = {}
    for r, s in zip(rows, scores):
        groups.setdefault(str(r.get("key")), []).append((r, float(s)))
    acc: dict[tuple[str, str], list[float]] = {}
    skipped = 0

    def add(group: tuple[str, str], row_hits: float, pair_hit: float) -> None:
        a = acc.setdefault(group, [0, 0.0, 0.0])
        a[0] += 1
        a[1] += row_hits
        a[2] += pair_hit

    for members in groups.values():
        pos = [m for m in members if float(m[0]["label"]) > 0.5]
        neg = [m for m in members if float(m[0]["label"]) <= 0.5]
        if len(pos) != 1 or len(neg) != 1:
            skipped += 1
            continue
        (c, sc), (r, sr) = pos[0], neg[0]
        kind, inst = _pair_perturbation(c, r)
        row_hits = ((sc > threshold) + (sr <= threshold)) / 2
        pair_hit = 1.0 if sc > sr else 0.5 if sc == sr else 0.0
        for g in (("overall", ""), ("by_perturbation", kind), ("by_instruction", inst),
                  ("by_perturbation_instruction", f"{kind}:{inst}")):
            add(g, row_hits, pair_hit)

    def stats(a: list[float]) -> dict:
        return {"pairs": int(a[0]), "row_accuracy": a[1] / a[0], "pair_accuracy": a[2] / a[0]}

    out: dict = {"overall": stats(acc[("overall", "")]) if ("overall", "") in acc else {"pairs": 0}}
    for section in ("by_perturbation", "by_instruction", "by_perturbation_instruction"):
        out[section] = {name: stats(a) for (sec, name), a in sorted(acc.items()) if sec == section}
    out["skipped_keys"] = skipped
    return out


def _synced_batch_count(n: int) -> int:
    """Under ZeRO-3 each forward is a collective: every rank must run as many batches as the busiest one."""
    from gapo.train import engine as E

    if E.world_size() == 1:
        return n
    import torch
    import torch.distributed as dist

    t = torch.tensor([n], device=E.comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def rm_logits(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
              batch_size: int = 32, facts: Optional[bool] = None):
    """`facts=None`: the layout stored in the RM (`gapo.models.reward_model.keeps_facts`)."""
    import torch

    from gapo.train.engine import is_zero3

    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    rows = [{"prompt": p, "response": r, "label": 0} for p, r in zip(prompts, responses)]
    if len(rows) != len(prompts) or len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    kind = kind_of(model)
    enc = encode_rows(tokenizer, rows, max_length, keeps_facts(model) if facts is None else facts)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = torch.empty(len(enc), dtype=torch.float32)
    n_batches = math.ceil(len(enc) / batch_size)
    total = _synced_batch_count(n_batches) if is_zero3(model) else n_batches
    try:
        with torch.no_grad():
            for b in range(total):
                idx = order[b * batch_size:(b + 1) * batch_size]
                fake = not idx  # this rank is done; keep the collective forwards in step with the others
                batch = collate([enc[i] for i in (idx or order[:1])] if enc else [([0, 0], [0, 0], 0.0)], tokenizer)
                logits = kind.score(module, {k: v.to(device) for k, v in batch.items()}).cpu()
                if not fake:
                    out[idx] = logits
    finally:
        module.train(was_training)
    return out


def rm_score(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], params: Params,
             batch_size: int = 32):
    logits = rm_logits(model, tokenizer, prompts, responses, params.reward.max_length, batch_size)
    return logits.sigmoid() if params.reward.score == "prob" else logits


def evaluate_reward_model(model, tokenizer, rows: Sequence[dict], params: Params, batch_size: int = 32) -> dict:
    import torch

    from gapo.train.losses import binary_cross_entropy_loss

    if not rows:
        return {"n": 0}
    logits = rm_logits(model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                       params.reward.max_length, batch_size)
    labels = torch.tensor([float(r["label"]) for r in rows])
    probs = logits.sigmoid()
    pos, neg = probs[labels > 0.5], probs[labels <= 0.5]
    return {
        "n": len(rows),
        "loss": float(binary_cross_entropy_loss(logits, labels)),
        "accuracy": float(((logits > 0).float() == labels).float().mean()),
        "auc": roc_auc(logits.tolist(), labels.tolist()),
        "mean_prob_pos": float(pos.mean()) if len(pos) else float("nan"),
        "mean_prob_neg": float(neg.mean()) if len(neg) else float("nan"),
    }


# ------------------------------------------------------------------------------------------ training
def train_reward_model(model_or_engine, tokenizer, rows: Sequence[dict], params: Params, *, epochs: float = 1.0,
                       desc: str = "rm", seed: int = 0, step_offset: int = 0):
    """BCE training of the encoder RM on `rows` for `epochs` passes. Returns (engine, curve[(step, loss, lr)])."""
    import torch
    from tqdm import tqdm

    from gapo.errors import NumericalError
    from gapo.train import engine as E
    from gapo.train.guards import inject_nan, pause_point

    optim = params.reward.optim
    rank, world = E.init_distributed()
    if not hasattr(model_or_engine, "backward"):  # a fresh RM (the warm-up): its layout and frozen layers
        ENCODER.prepare(getattr(model_or_engine, "module", model_or_engine), params.reward)
    enc = ENCODER.encode(tokenizer, rows, params.reward.max_length, keeps_facts(model_or_engine))
    micro_total = math.ceil(len(enc) * epochs / optim.micro_batch_size)
    steps = max(1, micro_total // (optim.gradient_accumulation_steps * world))
    if hasattr(model_or_engine, "backward"):
        engine = model_or_engine
    else:
        engine = E.build_train_engine(model_or_engine, params, optim, steps)

    def micro_batches():
        epoch = 0
        while True:
            order = batches_by_key(rows, [len(e[0]) for e in enc], optim.micro_batch_size, seed + epoch)
            usable = len(order) - len(order) % world
            for b in order[rank:usable:world]:
                yield collate([enc[i] for i in b], tokenizer)
            epoch += 1

    it = micro_batches()
    curve: list[tuple[int, float, float]] = []
    engine.train()
    bar = tqdm(total=steps, desc=desc, disable=bars_off(rank == 0), dynamic_ncols=True, mininterval=1.0)
    t0, seen = time.perf_counter(), 0
    for step in range(1, steps + 1):
        step_loss = 0.0
        for _ in range(optim.gradient_accumulation_steps):
            batch = {k: v.to(engine.device) for k, v in next(it).items()}
            loss = ENCODER.loss(ENCODER.score(engine, batch), batch)
            loss = inject_nan("rm.loss", loss, step=step, desc=desc)  # fault-injection hook (tests only)
            if not torch.isfinite(loss):
                raise NumericalError(f"{desc} step {step}: BCE loss is {loss.item()}")
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / optim.gradient_accumulation_steps
            seen += batch["input_ids"].size(0) * world
        step_loss = E.all_reduce_mean([step_loss])[0]
        curve.append((step_offset + step, step_loss, engine.get_lr()[0]))
        bar.update(1)
        pause_point(f"{desc}.step{step}")  # kill tests (tests/reliability)
        if step % params.reward.log_every == 0 or step == steps:
            window = [c[1] for c in curve[-params.reward.log_every:]]
            bar.set_postfix(step=step, loss=f"{sum(window) / len(window):.3f}",
                            samples_s=f"{seen / (time.perf_counter() - t0):.1f}")
    bar.close()
    return engine, curve


# ------------------------------------------------------------------------------------------ warm-up stage
def check_rm_warmup_inputs(params: Params, ws: Workspace) -> None:
    """What the warm-up reads, checked before anything else: its data files exist and hold valid rows, models/reward
    is a model directory. The stage calls it first, and gapo.preflight calls it before the stage's MLflow run opens,
    so a call that fails on its input leaves no run behind."""
    from gapo.errors import DataError
    from gapo.models.loading import check_model_dir, resolve_model_dir

    paths = (ws.jsonl("rm", "train"), ws.jsonl("rm", "validation")) if params.reward.eval_examples else \
        (ws.jsonl("rm", "train"),)
    pr_path = ws.jsonl("pr", "train") if params.reward.pr_fraction and ws.rm_data == "rm" else None
    for p in (*paths, *([pr_path] if pr_path else [])):
        if not p.exists():
            raise DataError(f"{p}: not found (run `gapo prepare` first)")
    check_model_dir(resolve_model_dir(ws.reward_base, "reward", params.models), "reward", params.models)
    for p in paths:
        load_rm_rows(p)
    if pr_path:
        from gapo.io import read_jsonl
        from gapo.data.preferences import preference_pairs

        preference_pairs(read_jsonl(pr_path), "pr")  # a row without prompt / chosen / rejected: one DataError line


def run_rm_warmup(params: Params, ws: Workspace) -> dict:
    from gapo import runtime
    from gapo.io import atomic_file, write_json
    from gapo.models.loading import load_reward_model
    from gapo.train import engine as E

    cfg = params.reward
    rank, world = E.init_distributed()
    runtime.setup(params, seed_offset=1)
    val_path = ws.jsonl("rm", "validation")
    check_rm_warmup_inputs(params, ws)
    model, tok = load_reward_model(ws.reward_base, params.models)
    train = warmup_rows(params, ws)
    # eval_examples = 0 skips validation (as in SFT); rows are sampled by key, so pairs stay whole.
    val = load_rm_rows(val_path, cfg.eval_examples, seed=params.seed) if cfg.eval_examples else []
    # No "before" evaluation: a fresh 1-logit head scores ~0.5 AUC by construction, and on MiniLM the extra pass
    # over the validation rows would cost ~15% of the warm-up's time budget.
    t0 = time.perf_counter()
    engine, curve = train_reward_model(model, tok, train, params, epochs=cfg.warmup_epochs, desc="rm_warmup",
                                       seed=params.seed)
    train_time = time.perf_counter() - t0
    after = evaluate_reward_model(engine, tok, val, params) if val else {}
    tail = [c[1] for c in curve[-max(1, len(curve) // 10):]]
    metrics = {
        "train_loss_first": curve[0][1], "train_loss_final": sum(tail) / len(tail),
        "val_loss": after.get("loss"), "val_accuracy": after.get("accuracy"), "val_auc": after.get("auc"),
        "val_mean_prob_pos": after.get("mean_prob_pos"), "val_mean_prob_neg": after.get("mean_prob_neg"),
        "train_examples": len(train), "val_examples": len(val), "steps": len(curve), "world_size": world,
        "time_s": round(train_time, 2), "samples_per_s": round(len(train) * cfg.warmup_epochs / train_time, 2),
    }
    E.save_hf(engine, tok, ws.rm_warmup, extra_json={"gapo_rm.json": {"base": str(ws.reward_base), **metrics}})
    if rank == 0:
        write_json(ws.metrics_file("rm_warmup"), metrics)
        ws.plots.mkdir(parents=True, exist_ok=True)
        with atomic_file(ws.plots / "rm_loss.csv") as fh:
            fh.write("step,loss,lr\n")
            fh.writelines(f"{s},{loss:.6f},{r:.6g}\n" for s, loss, r in curve)
    E.barrier()
    return {"checkpoint": str(ws.rm_warmup), **metrics}
