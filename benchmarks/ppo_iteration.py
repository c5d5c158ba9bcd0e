"""One PPO iteration (rollout + reward + update), samples/s: ours (gapo.train.ppo) vs TRL 1.12.0's
`trl.experimental.ppo.PPOTrainer`, same tiny policy, batch sizes, lengths and thread count, in one process.

Setup shared by both sides (default params unless overridden): policy = models/policy (llama-small, default
profile), reference = a copy of it, critic/value model initialised from the policy, rollout batch
`ppo.rollout_batch_size` prompts from data/ifeval/train, rollout micro-batch `ppo.micro_rollout_batch_size`,
`ppo.generate_max_len` new tokens (an untrained policy never emits EOS, so both sides decode the full length),
minibatch `ppo.train_batch_size` in micro-batches of `ppo.micro_train_batch_size`, 1 PPO epoch.
The RM: ours is the default MiniLM encoder reading decoded text in its own tokenizer (what the pipeline does);
TRL needs an RM that reads the policy's ids, so it gets the SAME MiniLM architecture re-sized to the policy
vocabulary (BertForSequenceClassification, `score` = its 1-logit head): equal RM compute on both sides.

Blocks alternate: ours ×k, TRL ×k, repeated; per-iteration times come from TRL's `on_step_end` callback and our
loop; the first iteration of each block is a warm-up and is dropped. Medians are reported.

    python benchmarks/ppo_iteration.py [--iters 2] [--blocks 2] [--threads 2] [-S ppo.generate_max_len=64 ...]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def build_ours(params, ws: Path):
    from gapo.models.critic import build_critic
    from gapo.models.loading import load_reward_model, load_tokenizer
    from gapo.train import engine as E
    from gapo.train.ppo import build_ppo_models

    E.init_distributed()
    pol = ws / "models" / "policy"
    critic = build_critic(params, pol, ws / "models" / "reward", load_tokenizer(pol, params.models))
    rm, rm_tok = load_reward_model(ws / "models" / "reward", params.models)
    return build_ppo_models(params, pol, pol, critic, E.build_inference_engine(rm, params), rm_tok)


def run_ours(models, rows, params, iters: int, seed: int) -> list[float]:
    from gapo.train.ppo import Where, ppo_iteration

    out, where = [], Where(stage="bench")
    n = params.ppo.rollout_batch_size
    for it in range(iters):
        t0 = time.perf_counter()
        stats = ppo_iteration(models, rows[it * n:(it + 1) * n], params, where, seed=seed + it)
        out.append(time.perf_counter() - t0)
        out_phases = {k: stats.get(k) for k in ("timing/rollout_s", "timing/forward_s", "timing/reward_s",
                                                "train_s")}
    return out, out_phases


def build_trl(params, ws: Path, rows, iters: int, tmp: Path):
    import torch
    from datasets import Dataset
    from transformers import (AutoConfig, BertForSequenceClassification, LlamaForSequenceClassification,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from gapo.models.loading import load_policy
    from gapo.train.rollout import encode_prompts

    ppo = params.ppo
    policy, tok = load_policy(ws / "models" / "policy", params.models)
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    ref, _ = load_policy(ws / "models" / "policy", params.models, role="reference")
    torch.manual_seed(params.seed + 2)
    value = LlamaForSequenceClassification(copy.deepcopy(policy.config).__class__.from_dict(
        {**policy.config.to_dict(), "num_labels": 1, "pad_token_id": tok.pad_token_id}))
    value.model.load_state_dict(policy.model.state_dict())
    rm_cfg = AutoConfig.from_pretrained(ws / "models" / "reward")
    rm_cfg.vocab_size, rm_cfg.num_labels, rm_cfg.pad_token_id = len(tok), 1, tok.pad_token_id
    rm = BertForSequenceClassification(rm_cfg)
    rm.score = rm.classifier  # TRL's get_reward reads `model.score` on the backbone's last hidden state
    rm.eval()
    ids = encode_prompts(rows, tok, ppo.prompt_max_len)
    ds = Dataset.from_dict({"input_ids": ids})
    micro = ppo.micro_train_batch_size
    args = PPOConfig(
        output_dir=str(tmp), per_device_train_batch_size=micro,
        gradient_accumulation_steps=ppo.train_batch_size // micro,
        num_mini_batches=ppo.rollout_batch_size // ppo.train_batch_size,
        local_rollout_forward_batch_size=ppo.micro_rollout_batch_size, response_length=ppo.generate_max_len,
        total_episodes=ppo.rollout_batch_size * iters, num_ppo_epochs=ppo.max_epochs,
        learning_rate=ppo.actor_learning_rate, kl_coef=ppo.init_kl_coef, cliprange=ppo.eps_clip,
        cliprange_value=ppo.value_clip, gamma=ppo.gamma, lam=ppo.lambd, temperature=ppo.temperature,
        stop_token="eos", num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=10**6,
        use_cpu=True, seed=params.seed, dataloader_num_workers=0, disable_tqdm=True)

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **k):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    clock = Clock()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=ds, value_model=value, callbacks=[clock])
    return trainer, clock


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2, help="iterations per block (the first is a warm-up)")
    ap.add_argument("--blocks", type=int, default=2, help="alternations ours/TRL")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both (runtime.threads)")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="ppo_iteration")
    ns = ap.parse_args(argv)
    ws = common.ensure_workspace()
    params = common.load_params(ns.overrides + [f"runtime.threads={ns.threads}"])
    from gapo import runtime
    from gapo.io import read_jsonl

    runtime.setup(params, seed_offset=3)
    torch.set_num_threads(ns.threads)
    n = params.ppo.rollout_batch_size
    rows = read_jsonl(ws / "data" / "ifeval" / "train.jsonl")[: n * ns.iters]
    ours_models = build_ours(params, ws)
    times = {"ours": [], "trl": []}
    phases = None
    load_before = common.loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for b in range(ns.blocks):
            t, phases = run_ours(ours_models, rows, params, ns.iters, seed=params.seed + 100 * b)
            times["ours"] += t[1:] if ns.iters > 1 else t
            trainer, clock = build_trl(params, ws, rows, ns.iters, Path(tmp))
            trainer.train()
            t = [b2 - a for a, b2 in zip(clock.marks, clock.marks[1:])]
            assert len(t) == ns.iters, f"TRL ran {len(t)} updates, expected {ns.iters}"
            times["trl"] += t[1:] if ns.iters > 1 else t
            del trainer
            print(f"[bench] block {b}: ours {times['ours'][-1]:.2f}s trl {times['trl'][-1]:.2f}s "
                  f"load {common.loadavg()}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    sps = {k: round(n / v, 3) for k, v in med.items()}
    ppo = params.ppo
    out = {"settings": {"rollout_batch_size": n, "micro_rollout_batch_size": ppo.micro_rollout_batch_size,
                        "train_batch_size": ppo.train_batch_size,
                        "micro_train_batch_size": ppo.micro_train_batch_size,
                        "generate_max_len": ppo.generate_max_len, "threads": ns.threads, "iters": ns.iters,
                        "blocks": ns.blocks},
           "samples_per_s": sps, "ratio_ours_over_trl": round(sps["ours"] / sps["trl"], 2),
           "iteration_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "ours_last_phases_s": phases, "load": {"before": load_before, "after": common.loadavg()}}
    common.emit(ns.name, out)
    return out


if __name__ == "__main__":
    main()
