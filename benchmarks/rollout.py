"""Rollout generation tokens/s: our batched KV-cached sampler vs naive uncached decoding vs HF `generate`.

Same model (the default profile's llama-small policy), same prompts (data/ifeval/train, formatted as PPO sees them),
same batch (ppo.micro_rollout_batch_size), same length (ppo.generate_max_len new tokens, EOS ignored so every
contender emits exactly B×N tokens), same sampling (temperature 1, no top-k/top-p), same threads.

    python benchmarks/rollout.py [--batch 16] [--new 128] [--threads 1] [--repeats 3] [--naive-new 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def setup(batch: int, ws: Path):
    from gapo.io import read_jsonl
    from gapo.models.loading import load_policy
    from gapo.models.prompting import pad_token_id
    from gapo.train.rollout import encode_prompts

    params = common.load_params()
    model, tok = load_policy(ws / "models" / "policy", params.models)
    model.eval()
    rows = read_jsonl(ws / "data" / "ifeval" / "train.jsonl")[:batch]
    prompts = encode_prompts(rows, tok, params.ppo.prompt_max_len)
    return model, tok, prompts, pad_token_id(tok)


def contenders(model, prompts, pad: int, new: int, naive_new: int) -> dict:
    import torch
    from transformers import GenerationConfig

    from gapo.train.sampler import left_pad, sample, sample_naive

    never = [10**9]  # an id no model emits: every row runs the full length
    B = len(prompts)

    from gapo.train import sampler as S

    def ours() -> float:
        s = sample(model, prompts, new, never, pad, generator=torch.Generator().manual_seed(0))
        assert s.response_ids.shape == (B, new)
        return B * new

    def ours_dynamic_cache() -> float:
        """Optimisation 2 off: HF forward + DynamicCache each step (inverse-CDF sampling kept)."""
        S.STATIC_CACHE = False
        try:
            return ours()
        finally:
            S.STATIC_CACHE = True

    def ours_v0() -> float:
        """Both optimisations off: the sampler as first written (DynamicCache + torch.multinomial)."""
        fast_draw = S._sample_categorical
        S.STATIC_CACHE = False
        S._sample_categorical = lambda probs, generator=None: torch.multinomial(probs, 1, generator=generator
                                                                                ).squeeze(-1)
        try:
            return ours()
        finally:
            S.STATIC_CACHE, S._sample_categorical = True, fast_draw

    def naive() -> float:
        s = sample_naive(model, prompts, naive_new, never, pad, generator=torch.Generator().manual_seed(0))
        assert s.response_ids.shape == (B, naive_new)
        return B * naive_new

    ids, mask = left_pad(prompts, pad)
    cfg = GenerationConfig(do_sample=True, max_new_tokens=new, min_new_tokens=0, temperature=1.0, top_k=0,
                           top_p=1.0, pad_token_id=pad, eos_token_id=None)

    def hf() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        assert out.shape == (B, ids.size(1) + new)
        return B * new

    def hf_static() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                                 cache_implementation="static")
        assert out.shape == (B, ids.size(1) + new)
        return B * new

    return {"ours": ours, "ours_dynamic_cache": ours_dynamic_cache, "ours_v0": ours_v0, "naive": naive,
            "hf_generate": hf, "hf_generate_static": hf_static}


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16, help="default: ppo.micro_rollout_batch_size")
    ap.add_argument("--new", type=int, default=128, help="default: ppo.generate_max_len")
    ap.add_argument("--naive-new", type=int, default=None, help="new tokens for the naive loop (default: --new)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (PPO decodes on 1: ppo.decode_threads)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma list of contenders (ours, ours_dynamic_cache, ours_v0, naive, "
                                                 "hf_generate, hf_generate_static)")
    ap.add_argument("--name", default="rollout")
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    ws = common.ensure_workspace()
    model, tok, prompts, pad = setup(ns.batch, ws)
    c = contenders(model, prompts, pad, ns.new, ns.naive_new or ns.new)
    if ns.only:
        c = {k: v for k, v in c.items() if k in ns.only.split(",")}
    res = common.interleaved(c, repeats=ns.repeats)
    ratios = {f"ours/{k}": common.ratio(res, "ours", k) for k in c if k != "ours" and "ours" in c}
    out = {"settings": {"batch": ns.batch, "new_tokens": ns.new, "naive_new_tokens": ns.naive_new or ns.new,
                        "threads": ns.threads, "repeats": ns.repeats,
                        "prompt_len_max": max(len(p) for p in prompts),
                        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)},
           "tokens_per_s": {k: v["per_s"] for k, v in res.items() if not k.startswith("_")},
           "ratios": ratios, "raw": res}
    common.emit(ns.name, out)
    return out


if __name__ == "__main__":
    main()
