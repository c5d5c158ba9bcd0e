#!/usr/bin/env python3
"""Measure on a CUDA GPU what infra/sizing.py computes: the activations one micro-batch keeps for backward.

    python infra/sizing_gpu_check.py [--out result.json] [--skip-7b]

Random-initialised bf16 models built from the real configs (Qwen2.5-1.5B/-7B, Longformer-base/-large; no
weights are downloaded), SDPA attention, train mode. For each case it records, relative to the memory the
weights hold before the forward pass:
- kept: memory still allocated after the forward pass, i.e. what autograd keeps for backward (compare with
  sizing.py's activation estimate);
- forward peak and backward peak (the latter includes the gradients, 2 bytes/param).
The actor case computes token log-probabilities as PPO does (logits -> fp32 -> log_softmax -> gather).
Needs torch with CUDA and transformers; prints a markdown table and optionally writes JSON.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("gapo_infra_sizing", Path(__file__).with_name("sizing.py"))
sizing = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sizing
_spec.loader.exec_module(sizing)
GIB = sizing.GIB


def _decoder(arch: "sizing.DecoderArch"):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                      num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                      num_key_value_heads=arch.kv_heads, tie_word_embeddings=arch.tied_embeddings,
                      max_position_embeddings=arch.max_positions, attn_implementation="sdpa")
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def _encoder(arch: "sizing.EncoderArch"):
    from transformers import LongformerConfig, LongformerForSequenceClassification

    cfg = LongformerConfig(vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
                           num_attention_heads=arch.heads, intermediate_size=arch.intermediate,
                           max_position_embeddings=arch.max_positions, type_vocab_size=arch.type_vocab,
                           attention_window=arch.attention_window, num_labels=1)
    with torch.device("cuda"):
        return LongformerForSequenceClassification(cfg).to(torch.bfloat16)


def measure(kind: str, arch, micro_batch: int, seq: int, checkpointing: bool) -> dict:
    torch.cuda.empty_cache()
    model = _decoder(arch) if kind == "actor" else _encoder(arch)
    n_params = sum(p.numel() for p in model.parameters())
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, arch.vocab, (micro_batch, seq), device="cuda")
    t0 = time.perf_counter()
    if kind == "actor":
        logits = model(input_ids=ids).logits
        logp = logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        del logits
        loss = -logp.mean()
    else:
        glob = torch.zeros_like(ids)
        glob[:, 0] = 1
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), global_attention_mask=glob).logits.float().mean()
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base
    fwd_peak = torch.cuda.max_memory_allocated() - base
    loss.backward()
    torch.cuda.synchronize()
    bwd_peak = torch.cuda.max_memory_allocated() - base
    seconds = time.perf_counter() - t0
    tokens = micro_batch * seq
    if kind == "actor":
        predicted = sizing.decoder_activation_bytes(arch, tokens, checkpointing, logits=True)
    else:
        predicted = sizing.encoder_activation_bytes(arch, tokens, checkpointing)
    out = {"model": arch.name, "kind": kind, "micro_batch": micro_batch, "seq": seq, "checkpointing": checkpointing,
           "params": n_params, "params_sizing": (sizing.decoder_params(arch) if kind == "actor"
                                                  else sizing.encoder_params(arch)),
           "weights_gib": base / GIB, "kept_gib": kept / GIB, "predicted_gib": predicted / GIB,
           "fwd_peak_gib": fwd_peak / GIB, "bwd_peak_gib": bwd_peak / GIB, "seconds": seconds}
    del model, loss, ids
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-7b", action="store_true")
    ns = ap.parse_args(argv)
    cases = [("actor", sizing.QWEN25_1_5B, 4, 2048, False), ("actor", sizing.QWEN25_1_5B, 4, 2048, True),
             ("rm", sizing.LONGFORMER_BASE, 8, 2048, False), ("rm", sizing.LONGFORMER_BASE, 8, 2048, True),
             ("rm", sizing.LONGFORMER_LARGE, 4, 2048, False), ("rm", sizing.LONGFORMER_LARGE, 4, 2048, True)]
    if not ns.skip_7b:
        cases += [("actor", sizing.QWEN25_7B, 2, 2048, False), ("actor", sizing.QWEN25_7B, 2, 2048, True)]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for case in cases:
        try:
            r = measure(*case)
        except Exception as exc:  # noqa: BLE001 - keep measuring the other cases
            r = {"model": case[1].name, "kind": case[0], "checkpointing": case[4], "error": repr(exc)[:300]}
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| model | micro x seq | ckpt | params (measured / sizing.py) | kept after forward, GiB | sizing.py, GiB "
          "| forward peak | backward peak (+grads) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | | {r['checkpointing']} | error: {r['error']} | | | | |")
            continue
        print(f"| {r['model']} | {r['micro_batch']} x {r['seq']} | {'on' if r['checkpointing'] else 'off'} | "
              f"{r['params']:,} / {r['params_sizing']:,} | {r['kept_gib']:.2f} | {r['predicted_gib']:.2f} | "
              f"{r['fwd_peak_gib']:.2f} | {r['bwd_peak_gib']:.2f} |")
    if ns.out:
        Path(ns.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
