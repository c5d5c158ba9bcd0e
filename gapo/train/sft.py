"""Warm-up SFT of the generator: models/policy + data/sft/train.jsonl -> checkpoints/sft (one readable recipe).

API
- `run_sft(params, ws)` -> summary   the `sft` stage's recipe in this process (any rank of a launched group;
      `gapo sft` relaunches itself under torchrun/deepspeed first if asked: gapo.stages)
- `tokenize_sft_rows(rows, tokenizer, max_seq_len)` -> list[(input_ids, labels)]
- `length_grouped_batches(lengths, batch_size, seed)` -> list[list[int]]
- `collate_sft(examples, pad_id)` -> dict(input_ids, attention_mask, labels)   right padding
- `eval_loss(model, examples, batch_size, pad_id)` -> token-weighted mean completion loss

Recipe: setup (params, seeds, threads, data, model, DeepSpeed engine) -> train (loop over optimizer updates, each
`gradient_accumulation_steps` micro-batches; rank r takes every world-th micro-batch of one shared order) -> save
(checkpoints/sft as an HF dir, metrics/sft.json, plots/sft_loss.csv). The loss is completion-only: prompt tokens
are labelled -100, the response and its EOS are learned (gapo.models.prompting), so the model learns where to stop.
"""
from __future__ import annotations

import math
import random
import time

from gapo.config import Params
from gapo.paths import Workspace
from gapo.runtime import bars_off

Example = tuple[list[int], list[int]]


# ------------------------------------------------------------------------------------------ data
def tokenize_sft_rows(rows: list[dict], tokenizer, max_seq_len: int, source: str = "sft") -> list[Example]:
    from gapo.errors import DataError
    from gapo.models.prompting import encode_sft_example

    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise DataError(f"{source} row {i}: expected string fields 'prompt' and 'completion'")
        out.append(encode_sft_example(r["prompt"], r["completion"], tokenizer, max_seq_len))
    return out


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group: int = 32) -> list[list[int]]:
    """Shuffle, sort by length inside windows of `group` batches, shuffle the batches: similar lengths share a
    batch (less padding, ~1.5x faster on CPU) while the order stays random."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = batch_size * group
    batches = []
    for s in range(0, len(idx), window):
        chunk = sorted(idx[s:s + window], key=lambda i: lengths[i])
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate_sft(examples: list[Example], pad_id: int) -> dict:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_loss(model, batch: dict):
    """Mean cross-entropy over response tokens; returns (loss, number of target tokens).

    The vocabulary projection runs only at the positions that predict a response token: prompt positions
    (about half of every row) never reach the lm_head. With SmolLM2's 49 k vocabulary the [B, T, V] logits were
    the largest tensor of the step (8×384×49152 floats, 0.6 GB) and a fifth of its FLOPs."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    keep = labels != -100
    n = keep.sum()
    module = getattr(model, "module", model)
    body, head = getattr(module, "model", None), getattr(module, "lm_head", None)
    if body is None or head is None or not callable(body):  # not a *ForCausalLM layout: full logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    else:
        hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum") / n.clamp(min=1)
    return loss, int(n)


def eval_loss(model, examples: list[Example], batch_size: int, pad_id: int) -> float:
    import torch

    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    device = next(module.parameters()).device
    with torch.no_grad():
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        for s in range(0, len(order), batch_size):
            batch = collate_sft([examples[i] for i in order[s:s + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, n = completion_loss(module, batch)
            total += float(loss) * n
            count += n
    module.train(was_training)
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------ recipe
def check_sft_inputs(params: Params, ws: Workspace) -> None:
    """What SFT reads, checked before anything else: its data files exist and parse, models/policy is a model
    directory. The stage calls it first, and gapo.preflight calls it before the stage's MLflow run opens, so a call
    that fails on its input leaves no run behind."""
    from gapo.errors import DataError
    from gapo.io import read_jsonl
    from gapo.models.loading import check_model_dir, resolve_model_dir

    train_path, val_path = ws.jsonl("sft", "train"), ws.jsonl("sft", "validation")
    if not train_path.exists():
        raise DataError(f"{train_path}: not found (run `gapo prepare` first)")
    check_model_dir(resolve_model_dir(ws.policy_base, "policy", params.models), "policy", params.models)
    read_jsonl(train_path)
    if val_path.exists() and params.sft.eval_examples:
        read_jsonl(val_path)


def run_sft(params: Params, ws: Workspace) -> dict:
    import torch
    from tqdm import tqdm

    from gapo import runtime
    from gapo.errors import NumericalError
    from gapo.io import atomic_file, read_jsonl, write_json
    from gapo.models.loading import autocast_context, load_policy
    from gapo.models.prompting import decode_response, encode_prompt, pad_token_id, stop_token_ids
    from gapo.train import engine as E
    from gapo.train.guards import inject_nan, pause_point
    from gapo.train.sampler import sample

    cfg, optim = params.sft, params.sft.optim
    # ---- setup
    rank, world = E.init_distributed()
    runtime.setup(params, seed_offset=0)
    train_path, val_path = ws.jsonl("sft", "train"), ws.jsonl("sft", "validation")
    check_sft_inputs(params, ws)
    model, tok = load_policy(ws.policy_base, params.models)
    if params.models.lora.enabled:  # checkpoints/sft is saved merged (engine.save_hf): a plain HF model again
        from gapo.models.adapters import add_lora

        model = add_lora(model, params.models.lora)
    pad = pad_token_id(tok)
    rows = read_jsonl(train_path)
    if cfg.max_examples:
        rows = rows[: cfg.max_examples]
    train = tokenize_sft_rows(rows, tok, cfg.max_seq_len, str(train_path))
    val_rows = read_jsonl(val_path)[: cfg.eval_examples] if val_path.exists() and cfg.eval_examples else []
    val = tokenize_sft_rows(val_rows, tok, cfg.max_seq_len, str(val_path))
    steps = cfg.max_steps or E.num_update_steps(len(train), optim, cfg.epochs, world)
    engine = E.build_train_engine(model, params, optim, steps)
    micro_per_step = optim.gradient_accumulation_steps

    def micro_batches():
        epoch = 0
        while True:  # one shared order per epoch; rank r takes every world-th micro-batch
            order = length_grouped_batches([len(x) for x, _ in train], optim.micro_batch_size, params.seed + epoch)
            usable = len(order) - len(order) % world
            for b in order[rank:usable:world]:
                yield collate_sft([train[i] for i in b], pad)
            epoch += 1

    eval_before = eval_loss(engine, val, optim.micro_batch_size, pad) if val else None

    # ---- train
    curve: list[tuple[int, float, float]] = []
    it = micro_batches()
    seen, t0 = 0, time.perf_counter()
    bar = tqdm(total=steps, desc="sft", disable=bars_off(rank == 0), dynamic_ncols=True, mininterval=1.0)
    engine.train()
    for step in range(1, steps + 1):
        step_loss = 0.0
        for _ in range(micro_per_step):
            batch = {k: v.to(engine.device) for k, v in next(it).items()}
            with autocast_context(engine.device.type, cfg.autocast, params.models):  # mixed precision: fp32 weights
                loss, _ = completion_loss(engine, batch)
            loss = inject_nan("sft.loss", loss, step=step)  # fault-injection hook (tests only)
            if not torch.isfinite(loss):
                raise NumericalError(f"sft step {step}: loss is {float(loss)}")
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / micro_per_step
            seen += batch["input_ids"].size(0) * world
        step_loss = E.all_reduce_mean([step_loss])[0]
        lr = engine.get_lr()[0]
        curve.append((step, step_loss, lr))
        elapsed = time.perf_counter() - t0
        bar.update(1)
        pause_point(f"sft.step{step}")  # kill tests (tests/reliability)
        if step % cfg.log_every == 0 or step == steps:
            window = [c[1] for c in curve[-cfg.log_every:]]
            bar.set_postfix(step=step, loss=f"{sum(window) / len(window):.3f}", lr=f"{lr:.2e}",
                            samples_s=f"{seen / elapsed:.1f}")
    bar.close()
    train_time = time.perf_counter() - t0
    eval_after = eval_loss(engine, val, optim.micro_batch_size, pad) if val else None

    # ---- save
    samples = []
    if val_rows:
        # A few greedy descriptions: the quickest human check that SFT learned the task format. Every rank
        # samples the same prompts (under ZeRO-3 each forward is a collective).
        prompts = [encode_prompt(r["prompt"], tok, params.ppo.prompt_max_len) for r in val_rows[:3]]
        out = sample(engine.module, prompts, params.ppo.generate_max_len, stop_token_ids(tok), pad, greedy=True,
                     sync_ranks=True)
        samples = [decode_response(ids, tok) for ids in out.response_ids.tolist()]
    tail = [c[1] for c in curve[-max(1, len(curve) // 10):]]
    metrics = {
        "train_loss_first": curve[0][1], "train_loss_final": sum(tail) / len(tail),
        "eval_loss_before": eval_before, "eval_loss": eval_after,
        "eval_ppl": math.exp(min(eval_after, 50.0)) if eval_after is not None else None,
        "steps": steps, "examples_seen": seen, "train_examples": len(train), "world_size": world,
        "time_s": round(train_time, 2), "samples_per_s": round(seen / train_time, 2),
    }
    E.save_hf(engine, tok, ws.sft, extra_json={"gapo_sft.json": {"base": str(ws.policy_base), **metrics}})
    if rank == 0:
        write_json(ws.metrics_file("sft"), metrics)
        ws.plots.mkdir(parents=True, exist_ok=True)
        with atomic_file(ws.plots / "sft_loss.csv") as fh:
            fh.write("step,loss,lr\n")
            fh.writelines(f"{s},{loss:.6f},{r:.6g}\n" for s, loss, r in curve)
    E.barrier()
    return {"checkpoint": str(ws.sft), **metrics, "samples": samples}
