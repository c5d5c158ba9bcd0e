#!/usr/bin/env python3
"""GPU memory sizing for GAPO's four roles (actor, critic, reference, reward model), computed from model configs.

Pure arithmetic, standard library only: nothing is loaded or measured. It prints the tables pasted into
docs/scale-out.md ("Sizing"); rerun it after changing a plan:

    python infra/sizing.py                      # all plans, 8 GPUs of 80 GiB
    python infra/sizing.py --gpus 4 --gpu-mem-gib 40 --plan qwen2.5-7b-zero3

What is counted (and where the numbers come from):
- Parameter counts from the architecture: Qwen2.5 (decoder: GQA attention with q/k/v biases, SwiGLU MLP,
  RMSNorm, tied or untied LM head) and Longformer (RoBERTa encoder plus the extra global q/k/v projections
  in every layer). Checked against the published totals in tests/infra/test_sizing.py.
- Model states per GPU: ZeRO accounting of Rajbhandari et al. 2020 (arXiv 1910.02054): mixed precision with
  Adam = 2 bytes weights + 2 bytes gradients + 12 bytes optimizer (fp32 master copy, momentum, variance) per
  parameter; fp32 = 4 + 4 + 8. Stage 1 shards the optimizer, stage 2 also the gradients, stage 3 also the
  weights over the N data-parallel GPUs. offload_optimizer moves the (sharded) optimizer states and gradients
  to CPU RAM (ZeRO-Offload, arXiv 2101.06840); offload_param (stage 3) moves the weight shards too. Stage 3 gathers whole layers for compute: two layers
  (current + prefetched) are added as a working set.
- Activations kept for backward, per layer and token, 16-bit, memory-efficient attention (SDPA/flash: no
  seq x seq score matrix): decoder 12h + 4h_kv + 8I bytes (norm inputs, q/k/v, attention output, SwiGLU
  gate/up/act/product); encoder 34h + 11 a (w+1) bytes (Korthikanti et al. 2022, arXiv 2205.05198, with
  Longformer's sliding window of w tokens instead of the full sequence, and 11 bytes per score entry as
  measured for HF's implementation instead of 5). Full activation checkpointing keeps only each layer's
  2h-byte input plus one layer being recomputed.
- The actor's log-probabilities need the full logits: bf16 logits + an fp32 copy + the fp32 log-softmax =
  10 bytes x vocab per token at the forward peak (4-6 of them stay for backward). With Qwen's 152k vocabulary
  this is often the largest term.
- Checked against measurements on an H200 (random-init bf16 models from the same configs,
  infra/sizing_gpu_check.py, table in docs/scale-out.md): the parameter counts are exact; the activation
  estimates land within about -11% / +10% of the measured forward/backward peaks.
- Generation KV cache: 2 (k, v) x layers x h_kv x 2 bytes per token.
Not counted: CUDA context and allocator fragmentation (the fit check keeps 10% headroom), DeepSpeed's
communication buckets (reduce_bucket_size, default 5e8 elements = 1 GB in bf16: lower it when tight),
dataloader memory, fp32 gradient accumulation buffers where DeepSpeed uses them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

GIB = 1024 ** 3


# ----------------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class DecoderArch:
    """A Llama/Qwen2-style decoder (config.json field names in comments)."""

    name: str
    vocab: int            # vocab_size
    hidden: int           # hidden_size
    layers: int           # num_hidden_layers
    heads: int            # num_attention_heads
    kv_heads: int         # num_key_value_heads
    intermediate: int     # intermediate_size
    tied_embeddings: bool  # tie_word_embeddings
    qkv_bias: bool = True  # Qwen2 has biases on q/k/v, not on o
    max_positions: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class EncoderArch:
    """A RoBERTa/Longformer-style encoder."""

    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int = 1
    global_qkv: bool = True       # Longformer: query_global / key_global / value_global per layer
    attention_window: int = 512   # Longformer attention_window (both sides together)


# Values from the models' config.json on the Hugging Face hub.
QWEN25_1_5B = DecoderArch("Qwen2.5-1.5B", vocab=151936, hidden=1536, layers=28, heads=12, kv_heads=2,
                          intermediate=8960, tied_embeddings=True)
QWEN25_7B = DecoderArch("Qwen2.5-7B", vocab=152064, hidden=3584, layers=28, heads=28, kv_heads=4,
                        intermediate=18944, tied_embeddings=False)
LONGFORMER_BASE = EncoderArch("Longformer-base-4096", vocab=50265, hidden=768, layers=12, heads=12,
                              intermediate=3072, max_positions=4098)
LONGFORMER_LARGE = EncoderArch("Longformer-large-4096", vocab=50265, hidden=1024, layers=24, heads=16,
                               intermediate=4096, max_positions=4098)
ARCHS = {a.name: a for a in (QWEN25_1_5B, QWEN25_7B, LONGFORMER_BASE, LONGFORMER_LARGE)}


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def decoder_layer_params(a: DecoderArch) -> int:
    attn = (_linear(a.hidden, a.hidden, a.qkv_bias) + 2 * _linear(a.hidden, a.kv_dim, a.qkv_bias)
            + _linear(a.hidden, a.hidden, bias=False))
    mlp = 3 * _linear(a.hidden, a.intermediate, bias=False)  # gate, up, down
    norms = 2 * a.hidden                                      # RMSNorm weights, no bias
    return attn + mlp + norms


def decoder_params(a: DecoderArch, head: str = "lm") -> int:
    """head="lm": the causal LM (actor, reference); head="value": the backbone + a scalar value head (critic)."""
    embed = a.vocab * a.hidden
    body = embed + a.layers * decoder_layer_params(a) + a.hidden  # + final norm
    if head == "lm":
        return body + (0 if a.tied_embeddings else a.vocab * a.hidden)
    if head == "value":
        return body + _linear(a.hidden, 1)
    raise ValueError(f"head must be 'lm' or 'value', got {head!r}")


def encoder_layer_params(a: EncoderArch) -> int:
    qkv = 3 * _linear(a.hidden, a.hidden)
    attn = qkv * (2 if a.global_qkv else 1) + _linear(a.hidden, a.hidden) + 2 * a.hidden  # + output LayerNorm
    mlp = _linear(a.hidden, a.intermediate) + _linear(a.intermediate, a.hidden) + 2 * a.hidden
    return attn + mlp


def encoder_params(a: EncoderArch, head: str = "score") -> int:
    """head="score": sequence classification with one output (RM, or a critic initialised from the RM:
    dense h->h + out_proj h->1, no pooler); head="pooler": the bare model with its pooler (published totals)."""
    embed = (a.vocab + a.max_positions + a.type_vocab) * a.hidden + 2 * a.hidden  # + LayerNorm
    body = embed + a.layers * encoder_layer_params(a)
    if head == "score":
        return body + _linear(a.hidden, a.hidden) + _linear(a.hidden, 1)
    if head == "pooler":
        return body + _linear(a.hidden, a.hidden)
    raise ValueError(f"head must be 'score' or 'pooler', got {head!r}")


def largest_layer_params(a) -> int:
    return decoder_layer_params(a) if isinstance(a, DecoderArch) else encoder_layer_params(a)


# ----------------------------------------------------------------------------------------- model states
@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of one trained replica, before sharding."""

    weights: int
    grads: int
    optim: int


PRECISION_BYTES = {
    "bf16": StateBytes(weights=2, grads=2, optim=12),  # fp32 master + Adam m + v
    "fp32": StateBytes(weights=4, grads=4, optim=8),   # Adam m + v
}


def model_state_bytes(n_params: int, zero_stage: int, n_gpus: int, precision: str = "bf16",
                      offload_optimizer: bool = False, offload_param: bool = False, trainable: bool = True,
                      layer_params: int = 0) -> dict:
    """Bytes of one model's states on each GPU and in CPU RAM per rank, for N data-parallel GPUs.

    A frozen model (trainable=False: reference, RM while PPO runs) keeps 16-bit (or fp32) weights only; it is
    sharded only under stage 3 (DeepSpeed's inference partitioning), else replicated."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    if offload_param and zero_stage != 3:
        raise ValueError("offload_param needs zero_stage 3")
    b = PRECISION_BYTES[precision]
    n = n_gpus
    w = n_params * b.weights
    g = n_params * b.grads if trainable else 0
    o = n_params * b.optim if trainable else 0
    if zero_stage >= 3:
        w /= n
    if zero_stage >= 2:
        g /= n
    if zero_stage >= 1:
        o /= n
    gpu = {"weights": w, "grads": g, "optim": o, "gather": 0.0}
    cpu = {"weights": 0.0, "optim": 0.0}
    if offload_optimizer and trainable:
        # ZeRO-Offload (arXiv 2101.06840, section 4): the 16-bit gradients and the fp32 optimizer states live
        # in CPU RAM, the CPU runs Adam, the GPU keeps the 16-bit weights.
        cpu["optim"], gpu["optim"] = gpu["optim"] + gpu["grads"], 0.0
        gpu["grads"] = 0.0
    if offload_param:
        cpu["weights"], gpu["weights"] = gpu["weights"], 0.0
    if zero_stage == 3 and n > 1:
        gpu["gather"] = 2 * layer_params * b.weights  # current + prefetched layer, gathered whole
    gpu["total"] = gpu["weights"] + gpu["grads"] + gpu["optim"] + gpu["gather"]
    cpu["total"] = cpu["weights"] + cpu["optim"]
    return {"gpu": gpu, "cpu": cpu}


# ----------------------------------------------------------------------------------------- activations
ACT_BYTES = 2  # bf16 activations


def decoder_activation_bytes(a: DecoderArch, tokens: int, checkpointing: bool, logits: bool) -> float:
    """Activations one micro-batch of `tokens` (= micro_batch x seq_len) keeps for backward."""
    per_layer = (12 * a.hidden + 4 * a.kv_dim + 8 * a.intermediate) * tokens  # bf16, see module docstring
    if checkpointing:
        kept = a.layers * 2 * a.hidden * tokens + per_layer  # layer inputs + one layer recomputed
    else:
        kept = a.layers * per_layer
    if logits:
        kept += 10 * a.vocab * tokens  # bf16 logits + fp32 copy + fp32 log-softmax
    return float(kept)


# Bytes per attention-score entry HF's Longformer keeps. Korthikanti's 16-bit accounting gives 5 (scores,
# probabilities, dropout mask); the chunked sliding-window implementation keeps fp32 probabilities and
# overlapping chunk copies: 10.8 measured on an H200 for base and large (infra/sizing_gpu_check.py).
LONGFORMER_SCORE_BYTES = 11


def encoder_activation_bytes(a: EncoderArch, tokens: int, checkpointing: bool) -> float:
    window_cols = a.attention_window + 1  # 2 x (window/2) neighbours + the token itself
    per_layer = (34 * a.hidden + LONGFORMER_SCORE_BYTES * a.heads * window_cols) * tokens
    if checkpointing:
        return float(a.layers * 2 * a.hidden * tokens + per_layer)
    return float(a.layers * per_layer)


def kv_cache_bytes(a: DecoderArch, tokens: int) -> float:
    return float(2 * a.layers * a.kv_dim * ACT_BYTES * tokens)


# ----------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """One column of the sizing table: a policy, an RM and the params.yaml knobs that decide memory."""

    name: str
    policy: DecoderArch
    reward: EncoderArch
    zero_stage: int                 # deepspeed.zero_stage
    precision: str = "bf16"         # deepspeed.precision (+ models.dtype=bfloat16)
    offload_optimizer: bool = False  # deepspeed.offload_optimizer
    offload_param: bool = False     # deepspeed.offload_param
    gradient_checkpointing: bool = True  # models.gradient_checkpointing
    critic_init: str = "policy"     # models.critic_init
    prompt_max_len: int = 1024      # ppo.prompt_max_len
    generate_max_len: int = 1024    # ppo.generate_max_len
    micro_train_batch_size: int = 2   # ppo.micro_train_batch_size
    micro_rollout_batch_size: int = 4  # ppo.micro_rollout_batch_size
    rm_micro_batch_size: int = 4    # reward.optim.micro_batch_size
    rm_max_length: int = 2048       # reward.max_length
    note: str = ""

    @property
    def seq_len(self) -> int:
        return self.prompt_max_len + self.generate_max_len


PLANS = {p.name: p for p in (
    Plan("qwen2.5-1.5b-zero2", QWEN25_1_5B, LONGFORMER_BASE, zero_stage=2, micro_train_batch_size=4,
         micro_rollout_batch_size=16, rm_micro_batch_size=8,
         note="1.5B policy, Longformer-base RM: ZeRO-2, no offload"),
    Plan("qwen2.5-7b-zero3", QWEN25_7B, LONGFORMER_LARGE, zero_stage=3,
         note="7B policy and 7B critic, Longformer-large RM: ZeRO-3, no offload"),
    Plan("qwen2.5-7b-zero2-offload", QWEN25_7B, LONGFORMER_LARGE, zero_stage=2, offload_optimizer=True,
         critic_init="reward",
         note="the GAPO scripts' setting: ZeRO-2 + Adam offload, Longformer critic"),
)}


def role_params(plan: Plan) -> dict:
    critic = (decoder_params(plan.policy, "value") if plan.critic_init == "policy"
              else encoder_params(plan.reward, "score"))
    return {
        "actor": decoder_params(plan.policy, "lm"),
        "critic": critic,
        "reference": decoder_params(plan.policy, "lm"),
        "reward": encoder_params(plan.reward, "score"),
    }


def size_plan(plan: Plan, n_gpus: int) -> dict:
    """Per-GPU bytes of every role, and the peak of the PPO and RM phases.

    Every engine stays resident (GAPO alternates PPO and RM training each round); only the activations of
    the model being trained at the moment (or the rollout KV cache) come on top of all model states."""
    params = role_params(plan)
    critic_arch = plan.policy if plan.critic_init == "policy" else plan.reward
    archs = {"actor": plan.policy, "critic": critic_arch, "reference": plan.policy, "reward": plan.reward}
    train_tokens = plan.micro_train_batch_size * plan.seq_len
    rm_tokens = plan.rm_micro_batch_size * plan.rm_max_length
    roles = {}
    for role, n in params.items():
        arch = archs[role]
        trainable = role != "reference"
        states = model_state_bytes(n, plan.zero_stage, n_gpus, plan.precision, plan.offload_optimizer,
                                   plan.offload_param, trainable=trainable, layer_params=largest_layer_params(arch))
        if role == "reference":
            act = {False: 0.0, True: 0.0}
        elif isinstance(arch, DecoderArch):
            act = {ck: decoder_activation_bytes(arch, train_tokens, ck, logits=(role == "actor"))
                   for ck in (False, True)}
        else:
            tokens = rm_tokens if role == "reward" else train_tokens
            act = {ck: encoder_activation_bytes(arch, tokens, ck) for ck in (False, True)}
        roles[role] = {"params": n, "states": states, "act_no_ckpt": act[False], "act_ckpt": act[True],
                       "act_used": act[plan.gradient_checkpointing]}
    kv = kv_cache_bytes(plan.policy, plan.micro_rollout_batch_size * plan.seq_len)
    states_gpu = sum(r["states"]["gpu"]["total"] for r in roles.values())
    states_cpu_rank = sum(r["states"]["cpu"]["total"] for r in roles.values())
    ppo_peak = states_gpu + max(roles["actor"]["act_used"], roles["critic"]["act_used"], kv)
    rm_peak = states_gpu + max(roles["reward"]["act_used"], kv)
    return {"plan": plan.name, "n_gpus": n_gpus, "roles": roles, "kv_cache": kv, "states_gpu": states_gpu,
            "cpu_per_rank": states_cpu_rank, "ppo_peak": ppo_peak, "rm_peak": rm_peak,
            "peak": max(ppo_peak, rm_peak)}


def fits(peak_bytes: float, gpu_mem_gib: float, headroom: float = 0.9) -> bool:
    return peak_bytes <= headroom * gpu_mem_gib * GIB


# ----------------------------------------------------------------------------------------- printing
def _g(x: float) -> str:
    return f"{x / GIB:.1f}"


def params_table() -> str:
    rows = ["| model | role head | parameters | of which embeddings |", "|---|---|---:|---:|"]
    for a in (QWEN25_1_5B, QWEN25_7B):
        emb = a.vocab * a.hidden * (1 if a.tied_embeddings else 2)
        rows.append(f"| {a.name} | LM (actor, reference) | {decoder_params(a, 'lm'):,} | {emb:,} |")
        rows.append(f"| {a.name} | value (critic) | {decoder_params(a, 'value'):,} | {a.vocab * a.hidden:,} |")
    for a in (LONGFORMER_BASE, LONGFORMER_LARGE):
        emb = (a.vocab + a.max_positions + a.type_vocab) * a.hidden
        rows.append(f"| {a.name} | score (RM, critic) | {encoder_params(a, 'score'):,} | {emb:,} |")
    return "\n".join(rows)


def plan_settings_table(plans: list[Plan]) -> str:
    keys = [("deepspeed.zero_stage", "zero_stage"), ("deepspeed.precision", "precision"),
            ("deepspeed.offload_optimizer", "offload_optimizer"), ("deepspeed.offload_param", "offload_param"),
            ("models.gradient_checkpointing", "gradient_checkpointing"), ("models.critic_init", "critic_init"),
            ("ppo.prompt_max_len", "prompt_max_len"), ("ppo.generate_max_len", "generate_max_len"),
            ("ppo.micro_train_batch_size", "micro_train_batch_size"),
            ("ppo.micro_rollout_batch_size", "micro_rollout_batch_size"),
            ("reward.optim.micro_batch_size", "rm_micro_batch_size"), ("reward.max_length", "rm_max_length")]
    rows = ["| params.yaml key | " + " | ".join(p.name for p in plans) + " |",
            "|---|" + "---|" * len(plans),
            "| models.policy / models.reward | " + " | ".join(f"{p.policy.name} / {p.reward.name}" for p in plans)
            + " |"]
    for key, attr in keys:
        vals = []
        for p in plans:
            v = getattr(p, attr)
            vals.append(str(v).lower() if isinstance(v, bool) else str(v))
        rows.append(f"| {key} | " + " | ".join(vals) + " |")
    rows.append("| models.dtype | " + " | ".join("bfloat16" if p.precision == "bf16" else "float32" for p in plans)
                + " |")
    return "\n".join(rows)


def roles_table(sized: dict) -> str:
    head = ("| role | params | weights | grads | Adam+master (GPU) | gather | activations, no ckpt | "
            "activations, ckpt | states on GPU | CPU RAM per rank |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for role, r in sized["roles"].items():
        s = r["states"]
        rows.append(f"| {role} | {r['params'] / 1e9:.3f} B | {_g(s['gpu']['weights'])} | {_g(s['gpu']['grads'])} | "
                    f"{_g(s['gpu']['optim'])} | {_g(s['gpu']['gather'])} | {_g(r['act_no_ckpt'])} | "
                    f"{_g(r['act_ckpt'])} | {_g(s['gpu']['total'])} | {_g(s['cpu']['total'])} |")
    rows.append(f"| rollout KV cache | | | | | | {_g(sized['kv_cache'])} | {_g(sized['kv_cache'])} | | |")
    rows.append(f"| **peak per GPU** | | | | | | | | **{_g(sized['peak'])}** "
                f"(PPO {_g(sized['ppo_peak'])}, RM {_g(sized['rm_peak'])}) | {_g(sized['cpu_per_rank'])} |")
    return "\n".join(rows)


def sweep_table(plans: list[Plan], gpu_counts: list[int], gpu_mem_gib: float, gpus_per_node: int) -> str:
    """Peak GPU GiB per GPU; with offload also the CPU RAM per node (ranks on a node share it)."""
    rows = ["| plan | " + " | ".join(f"{n} GPU" for n in gpu_counts) + " |", "|---|" + "---:|" * len(gpu_counts)]
    for p in plans:
        cells = []
        for n in gpu_counts:
            s = size_plan(p, n)
            cell = f"{_g(s['peak'])}{'' if fits(s['peak'], gpu_mem_gib) else ' ✗'}"
            if s["cpu_per_rank"]:
                cell += f" (CPU {_g(s['cpu_per_rank'] * min(n, gpus_per_node))}/node)"
            cells.append(cell)
        rows.append(f"| {p.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs for the per-role tables (default 8)")
    ap.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU for the fit check")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="ranks sharing one node's CPU RAM (default 8)")
    ap.add_argument("--plan", action="append", choices=sorted(PLANS), help="only these plans (repeatable)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ns = ap.parse_args(argv)
    plans = [PLANS[n] for n in (ns.plan or PLANS)]
    sweep = [1, 2, 4, 8, 16]
    if ns.json:
        out = {"params": {a.name: (decoder_params(a) if isinstance(a, DecoderArch) else encoder_params(a))
                          for a in ARCHS.values()},
               "plans": {p.name: {"settings": asdict(p) | {"policy": p.policy.name, "reward": p.reward.name},
                                  "sized": size_plan(p, ns.gpus),
                                  "sweep": {n: size_plan(p, n)["peak"] for n in sweep}} for p in plans}}
        json.dump(out, sys.stdout, indent=1, default=float)
        print()
        return 0
    print("Parameter counts (from config.json shapes)\n")
    print(params_table())
    print("\nPlans: the params.yaml settings each plan assumes\n")
    print(plan_settings_table(plans))
    for p in plans:
        print(f"\n{p.name}: {p.note}. GiB per GPU with {ns.gpus} GPUs, seq {p.seq_len} "
              f"(prompt {p.prompt_max_len} + generation {p.generate_max_len})\n")
        print(roles_table(size_plan(p, ns.gpus)))
    print(f"\nPeak GiB per GPU by data-parallel GPU count (✗ = over 90% of {ns.gpu_mem_gib:g} GiB; CPU RAM "
          f"per node with {ns.gpus_per_node} GPUs per node)\n")
    print(sweep_table(plans, sweep, ns.gpu_mem_gib, ns.gpus_per_node))
    return 0


if __name__ == "__main__":
    sys.exit(main())
