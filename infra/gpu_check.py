#!/usr/bin/env python3
"""GPU check: SFT and one PPO iteration through gapo's own training code, bf16 + ZeRO-2, on a config-built Llama.

    python infra/gpu_check.py                       # CUDA: ~150M-parameter Llama, bf16, ZeRO-2 (defaults)
    python infra/gpu_check.py --tiny --cpu          # CPU smoke test of the same path (tiny model, fp32 or bf16)
    python infra/gpu_check.py --out result.json     # also write the figures as JSON

What runs (no weights or data downloaded; everything is built here in a temporary workspace):
1. a synthetic SFT set (product-description-like prompts, completions long enough that every example is cut at
   `--seq` tokens, so the token count is exact), a byte-level BPE tokenizer trained on it
   (gapo.models.builders.train_bpe_tokenizer) and a Llama built from a config (gapo.models.builders.build_llama);
2. `gapo.train.sft.run_sft` (the `gapo sft` stage function) with `-S`-style overrides: DeepSpeed engine,
   ZeRO stage 2, bf16, torch AdamW, cosine schedule;
3. one PPO iteration as gapo.train.ppo.ppo_iteration composes it: `make_experience` (KV-cached sampling,
   actor / reference / critic forwards, RM scores of the decoded text), advantage whitening, `ppo_train`
   (actor and critic DeepSpeed engines, clipped losses). The critic starts from the SFT policy
   (`models.critic_init=policy`), the RM is a config-built BERT classifier with its own WordPiece tokenizer.

Figures: tokens/s and model FLOPs utilisation (MFU = achieved model FLOP/s / peak dense bf16 FLOP/s; 989 TFLOP/s
for H100/H200 SXM). Model FLOPs per token follow PaLM (Chowdhery et al. 2022, app. B): training
6·N + 12·L·d·T, forward only 2·N + 4·L·d·T, where N counts the matmul parameters (the tied embedding once, as
the LM head; the input lookup is not a matmul), L layers, d hidden size, T the sequence length. No activation
recomputation is counted (gradient checkpointing is off). Generation is memory-bound; its MFU is reported for
completeness, the meaningful figure there is tokens/s.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}

WORDS = ("alpine aluminium bamboo battery blender bottle breathable cable canvas ceramic charger compact cordless "
         "cotton durable ergonomic espresso foldable frame glass handle insulated kettle keyboard lamp leather "
         "lightweight linen magnetic maple mattress modular monitor mug nylon oak organic pillow portable premium "
         "rechargeable recycled rugged silicone sleek speaker stainless sturdy tablet thermal titanium travel "
         "ultralight vacuum walnut waterproof wireless wool").split()
# Plus pronounceable pseudo-words, so that a BPE vocabulary of several thousand tokens can actually be learned.
_SYL = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
WORDS += ["".join(random.Random(i).choices(_SYL, k=2 + i % 3)) for i in range(6000)]
REQUIREMENTS = ["Use at least 300 words.", "Do not use any commas.", "End with the phrase 'Enjoy it.'",
                "Write in all lowercase letters.", "Include the keyword durable twice.", "Use exactly 3 paragraphs."]


def synthetic_rows(n: int, completion_words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = " ".join(rng.choice(WORDS) for _ in range(3))
        facts = ". ".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(6))
        req = "\n".join(rng.sample(REQUIREMENTS, 2))
        prompt = f"Product: {name} #{i}\nFacts: {facts}.\nWrite a product description.\nRequirements:\n{req}"
        completion = " ".join(rng.choice(WORDS) for _ in range(completion_words)) + "."
        rows.append({"key": f"gpu-check-{i}", "category": "synthetic", "prompt": prompt, "completion": completion,
                     "instruction_id_list": [], "kwargs": []})
    return rows


def matmul_params(model) -> int:
    """Parameters of the matrix multiplies of one forward pass: every weight except the input embedding lookup,
    plus the LM head (counted once even when tied to the embedding)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters())
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    return total - emb.numel() + (emb.numel() if tied else 0)


def flops_per_token(n_matmul: int, layers: int, hidden: int, seq: int, train: bool) -> float:
    return (6 if train else 2) * n_matmul + (12 if train else 4) * layers * hidden * seq


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tf in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tf * 1e12
    return None


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model and batches (CPU smoke test)")
    ap.add_argument("--cpu", action="store_true", help="force runtime.device=cpu")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--zero-stage", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=1024, help="SFT sequence length (every example is cut to it)")
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--rollout", type=int, default=64, help="PPO prompts per iteration")
    ap.add_argument("--micro-rollout", type=int, default=32)
    ap.add_argument("--micro-train", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: a temp dir)")
    ns = ap.parse_args(argv)
    if ns.tiny:
        ns.hidden, ns.layers, ns.heads, ns.intermediate, ns.vocab = 64, 2, 4, 256, 512
        ns.seq, ns.sft_steps, ns.micro_batch = 128, 4, 4
        ns.rollout, ns.micro_rollout, ns.micro_train, ns.prompt_len, ns.gen_len = 8, 4, 4, 96, 16

    import torch

    import gapo  # noqa: F401  (offline / no-telemetry environment)
    from gapo.config import ArchConfig, RewardArchConfig, load_params
    from gapo.io import write_jsonl
    from gapo.models.builders import build_bert_classifier, build_llama, train_bpe_tokenizer, train_wordpiece_tokenizer
    from gapo.models.critic import build_critic
    from gapo.models.loading import load_reward_model, save_pretrained
    from gapo.paths import Workspace
    from gapo.train import engine as E
    from gapo.train import ppo as P
    from gapo.train.sft import run_sft, tokenize_sft_rows

    cuda = torch.cuda.is_available() and not ns.cpu
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    bf16 = ns.precision == "bf16"
    overrides = [
        f"runtime.device={'cuda' if cuda else 'cpu'}", "runtime.deterministic=false",
        f"runtime.threads={0 if cuda else 1}",
        f"deepspeed.zero_stage={ns.zero_stage}", f"deepspeed.precision={'bf16' if bf16 else 'fp32'}",
        f"models.dtype={'bfloat16' if bf16 else 'float32'}", "models.critic_init=policy",
        "models.gradient_checkpointing=false",
        f"sft.max_steps={ns.sft_steps}", f"sft.max_seq_len={ns.seq}", "sft.eval_examples=0",
        f"sft.optim.micro_batch_size={ns.micro_batch}", "sft.optim.gradient_accumulation_steps=1",
        f"ppo.rollout_batch_size={ns.rollout}", f"ppo.micro_rollout_batch_size={ns.micro_rollout}",
        f"ppo.train_batch_size={ns.rollout}", f"ppo.micro_train_batch_size={ns.micro_train}",
        "ppo.n_samples_per_prompt=1", "ppo.max_epochs=1",
        f"ppo.prompt_max_len={ns.prompt_len}", f"ppo.generate_max_len={ns.gen_len}",
        f"reward.max_length={ns.prompt_len + ns.gen_len}",
    ]
    params = load_params(None, overrides)
    tmp = None
    if ns.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gapo-gpu-check-")
        ns.workdir = Path(tmp.name)
    ws = Workspace(ns.workdir.resolve())
    result: dict = {"device": device_name, "torch": torch.__version__, "precision": params.deepspeed.precision,
                    "zero_stage": params.deepspeed.zero_stage, "overrides": overrides}
    t_all = time.perf_counter()

    # ---- data, tokenizers, models (built from configs)
    n_sft = ns.sft_steps * ns.micro_batch
    rows = synthetic_rows(max(n_sft, 64), completion_words=ns.seq, seed=0)
    write_jsonl(ws.jsonl("sft", "train"), rows)
    texts = [r["prompt"] + "\n" + r["completion"] for r in rows[:512]]
    tok = train_bpe_tokenizer(texts, ns.vocab, max_length=max(ns.seq, ns.prompt_len + ns.gen_len))
    arch = ArchConfig(hidden_size=ns.hidden, num_layers=ns.layers, num_heads=ns.heads,
                      intermediate_size=ns.intermediate, vocab_size=ns.vocab,
                      max_position_embeddings=max(ns.seq, ns.prompt_len + ns.gen_len))
    policy = build_llama(arch, tok, seed=params.seed)
    n_params = sum(p.numel() for p in policy.parameters())
    n_matmul = matmul_params(policy)
    save_pretrained(policy, tok, ws.policy_base)
    del policy
    rm_tok = train_wordpiece_tokenizer(texts, min(ns.vocab, 8192), max_length=ns.prompt_len + ns.gen_len)
    rm_arch = RewardArchConfig(hidden_size=max(64, ns.hidden // 2), num_layers=max(2, ns.layers // 2),
                               num_heads=max(2, ns.heads // 2), intermediate_size=max(256, ns.intermediate // 2),
                               vocab_size=ns.vocab, max_position_embeddings=ns.prompt_len + ns.gen_len)
    save_pretrained(build_bert_classifier(rm_arch, rm_tok, seed=params.seed + 1), rm_tok, ws.rm_warmup)
    result.update(policy_params=n_params, policy_matmul_params=n_matmul, vocab=len(tok),
                  arch=dict(hidden=ns.hidden, layers=ns.layers, heads=ns.heads, intermediate=ns.intermediate))
    print(f"[gpu-check] {device_name}: Llama {n_params / 1e6:.1f}M parameters ({n_matmul / 1e6:.1f}M in matmuls), "
          f"vocab {len(tok)}, {params.deepspeed.precision}, ZeRO-{params.deepspeed.zero_stage}", flush=True)
    peak = peak_flops(device_name, ns.peak_tflops) if cuda else None

    def mfu(flops: float, seconds: float):
        return round(flops / seconds / peak, 4) if peak else None

    # ---- SFT: the `gapo sft` stage function
    t0 = time.perf_counter()
    sft = run_sft(params, ws)
    _sync()
    sft_wall = time.perf_counter() - t0
    tokens = sft["examples_seen"] * ns.seq   # every example is exactly --seq tokens (checked below)
    lengths = {len(x) for x, _ in tokenize_sft_rows(rows[:32], tok, ns.seq)}
    assert lengths == {ns.seq}, f"SFT examples are not all {ns.seq} tokens: {sorted(lengths)[:5]}"
    sft_flops = tokens * flops_per_token(n_matmul, ns.layers, ns.hidden, ns.seq, train=True)
    result["sft"] = {"steps": sft["steps"], "micro_batch": ns.micro_batch, "seq": ns.seq, "tokens": tokens,
                     "train_s": sft["time_s"], "stage_wall_s": round(sft_wall, 2),
                     "tokens_per_s": round(tokens / sft["time_s"], 1),
                     "tflops_per_s": round(sft_flops / sft["time_s"] / 1e12, 2), "mfu": mfu(sft_flops, sft["time_s"]),
                     "loss_first": round(sft["train_loss_first"], 4), "loss_final": round(sft["train_loss_final"], 4)}
    print(f"[gpu-check] sft: {json.dumps(result['sft'])}", flush=True)

    # ---- one PPO iteration (gapo.train.ppo.ppo_iteration, unrolled to time its two phases)
    t0 = time.perf_counter()
    critic = build_critic(params, ws.sft, ws.rm_warmup, tok)
    rm, rm_tok2 = load_reward_model(ws.rm_warmup, params.models)
    models = P.build_ppo_models(params, ws.sft, ws.sft, critic, E.build_inference_engine(rm, params), rm_tok2)
    _sync()
    build_s = time.perf_counter() - t0
    prompts = [{"prompt": r["prompt"], "instruction_id_list": [], "kwargs": []}
               for r in synthetic_rows(ns.rollout, 8, seed=1)]
    where = P.Where(round=1, stage="ppo")
    t0 = time.perf_counter()
    rollouts, exp_stats = P.make_experience(models, P.rank_share(prompts), params, models.kl_ctl.value, where)
    _sync()
    exp_s = time.perf_counter() - t0
    P.whiten_advantages(rollouts)
    t0 = time.perf_counter()
    train_stats = P.ppo_train(models, rollouts, params, where, seed=params.seed)
    _sync()
    train_s = time.perf_counter() - t0
    gen_tokens = sum(r.response_ids.numel() for r in rollouts)
    seq_lens = [r.prompt_ids.numel() + r.response_ids.numel() for r in rollouts]
    seq_tokens = sum(seq_lens)
    mean_T = seq_tokens / len(seq_lens)
    critic_mm = sum(p.numel() for p in P._module(models.critic).parameters()) - \
        P._module(models.actor).get_input_embeddings().weight.numel()
    # experience: generation (actor, one forward per new token) + a forward of actor, reference and critic
    exp_flops = gen_tokens * flops_per_token(n_matmul, ns.layers, ns.hidden, int(mean_T), train=False) + \
        seq_tokens * (2 * flops_per_token(n_matmul, ns.layers, ns.hidden, int(mean_T), train=False)
                      + flops_per_token(critic_mm, ns.layers, ns.hidden, int(mean_T), train=False))
    # training: actor and critic, forward + backward on every rollout token (max_epochs = 1)
    train_flops = seq_tokens * (flops_per_token(n_matmul, ns.layers, ns.hidden, int(mean_T), train=True)
                                + flops_per_token(critic_mm, ns.layers, ns.hidden, int(mean_T), train=True))
    result["ppo"] = {"rollouts": len(rollouts), "generated_tokens": gen_tokens, "sequence_tokens": seq_tokens,
                     "mean_response_len": round(gen_tokens / len(rollouts), 1), "build_s": round(build_s, 2),
                     "experience_s": round(exp_s, 2), "train_s": round(train_s, 2),
                     "generate_tokens_per_s": round(gen_tokens / exp_s, 1),
                     "experience_mfu": mfu(exp_flops, exp_s),
                     "train_tokens_per_s": round(seq_tokens / train_s, 1),
                     "train_tflops_per_s": round(train_flops / train_s / 1e12, 2),
                     "train_mfu": mfu(train_flops, train_s),
                     "iteration_tokens_per_s": round(seq_tokens / (exp_s + train_s), 1),
                     "reward": round(exp_stats["reward"], 4), "kl": round(exp_stats["kl"], 6),
                     "policy_loss": round(train_stats["policy_loss"], 4),
                     "value_loss": round(train_stats["value_loss"], 4),
                     "critic_matmul_params": critic_mm}
    print(f"[gpu-check] ppo: {json.dumps(result['ppo'])}", flush=True)
    if cuda:
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["peak_tflops"] = peak / 1e12 if peak else None
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(result, indent=2, sort_keys=True))
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
