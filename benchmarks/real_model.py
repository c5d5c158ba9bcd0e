"""The levers that fit SmolLM2-135M-Instruct to 2 CPU cores, each measured side by side in one process.

    python benchmarks/real_model.py decode [--batch 32] [--new 128] [--threads 2] [--repeats 2] [--policy DIR]
    python benchmarks/real_model.py ppo [--threads 2] [--repeats 2] [--policy DIR] [-S key=value ...]

`decode`: rollout tokens/s of our sampler (gapo.train.sampler.sample: static KV cache, finished rows dropped) vs HF
`generate` with the same bf16 weights, threads, prompts (data/ifeval/train, PPO's prompt format), sampling knobs
(temperature 1) and stop ids; tokens = response tokens up to and including EOS. `--policy` should be an SFT
checkpoint: the untrained model rarely stops, and stopping is where the lengths differ.

`ppo`: one PPO iteration (rollouts + reward + update) in samples/s for four set-ups on the same prompts:
default (LoRA + bf16 autocast + group advantages), full fine-tuning, fp32 (no autocast), and GAE with a critic
(a copy of the policy with a value head). The reward is the verifier (+1/-1), so no RM cost hides the policy's.

Contenders alternate (A B C D A B C D ...) and medians are reported (benchmarks/common.py). Results go to
benchmarks/results/real_model_<what>.json; docs/benchmarks.md quotes them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WS = Path("/tmp/gapo-bench/ws-smol")


def workspace() -> Path:
    """prepare + models on the default profile (SmolLM2 + MiniLM) with reduced data, built once."""
    WS.mkdir(parents=True, exist_ok=True)
    if not (WS / "models" / "policy").exists():
        for stage in ("prepare", "models"):
            common.gapo(WS, stage, overrides=["data.num_products=200", "data.test_prompts=60"], profile=None)
    return WS


def public_settings(ns) -> dict:
    """The run's settings for a committed result: a --policy path is this machine's, so only its last two parts."""
    out = dict(vars(ns))
    if out.get("policy"):
        out["policy"] = "/".join(Path(out["policy"]).parts[-2:])
    return out


def decode(ns) -> dict:
    import torch
    from transformers import GenerationConfig

    from gapo.io import read_jsonl
    from gapo.models.loading import load_policy
    from gapo.models.prompting import pad_token_id, stop_token_ids
    from gapo.train.rollout import encode_prompts
    from gapo.train.sampler import bf16_decoder, left_pad, sample

    ws = workspace()
    torch.set_num_threads(ns.threads)
    params = common.load_params(profile=None)
    model, tok = load_policy(ns.policy or ws / "models" / "policy", params.models)
    model = bf16_decoder(model)
    rows = read_jsonl(ws / "data" / "ifeval" / "train.jsonl")[: ns.batch]
    prompts = encode_prompts(rows, tok, params.ppo.prompt_max_len)
    pad, stops = pad_token_id(tok), stop_token_ids(tok)
    ids, mask = left_pad(prompts, pad)
    cfg = GenerationConfig(do_sample=True, max_new_tokens=ns.new, temperature=1.0, top_k=0, top_p=1.0,
                           pad_token_id=pad, eos_token_id=stops)

    def response_tokens(resp: torch.Tensor) -> int:
        total = 0
        for row in resp.tolist():
            n = len(row)
            for j, t in enumerate(row):
                if t in stops:
                    n = j + 1
                    break
            total += n
        return total

    seed = iter(range(10**6))

    def ours() -> float:
        s = sample(model, prompts, ns.new, stops, pad, generator=torch.Generator().manual_seed(next(seed)))
        return float(s.action_mask.sum())

    def hf() -> float:
        torch.manual_seed(next(seed))
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        return float(response_tokens(out[:, ids.size(1):]))

    res = common.interleaved({"ours": ours, "hf_generate": hf}, repeats=ns.repeats, warmup=False)
    return {"settings": public_settings(ns), "results": res, "ratio_ours_over_hf": common.ratio(res, "ours", "hf_generate")}


def ppo(ns) -> dict:
    import torch

    from gapo.io import read_jsonl
    from gapo.models.critic import build_critic
    from gapo.models.loading import load_reward_model, load_tokenizer
    from gapo.train import engine as E
    from gapo.train.ppo import Where, build_ppo_models, ppo_iteration

    ws = workspace()
    torch.set_num_threads(ns.threads)
    E.init_distributed()
    pol = Path(ns.policy or ws / "models" / "policy")
    base = ["ppo.reward_source=verifier", "ppo.rollout_batch_size=4", "ppo.n_samples_per_prompt=4",
            "ppo.micro_rollout_batch_size=16", "ppo.train_batch_size=8", "ppo.micro_train_batch_size=8",
            "ppo.generate_max_len=64", *ns.set]
    setups = {
        "default_lora_bf16_group": [],
        "full_finetune": ["models.lora.enabled=false", "ppo.actor_learning_rate=1e-6"],
        "fp32": ["ppo.autocast=none"],
        "gae_critic": ["ppo.advantage_estimator=gae"],
    }
    rows = read_jsonl(ws / "data" / "ifeval" / "train.jsonl")[:4]
    rm, rm_tok = load_reward_model(ws / "models" / "reward", common.load_params(profile=None).models)
    built = {}
    for name, extra in setups.items():
        params = common.load_params(base + extra, profile=None)
        critic = (build_critic(params, pol, ws / "models" / "reward", load_tokenizer(pol, params.models))
                  if params.ppo.advantage_estimator == "gae" else None)
        built[name] = (params, build_ppo_models(params, pol, pol, critic, rm, rm_tok))

    def runner(name):
        params, models = built[name]

        def run() -> float:
            stats = ppo_iteration(models, rows, params, Where(stage="bench"), seed=0)
            run.last = stats
            return float(len(rows) * params.ppo.n_samples_per_prompt)
        return run

    fns = {name: runner(name) for name in setups}
    res = common.interleaved(fns, repeats=ns.repeats, warmup=False)
    ratios = {name: common.ratio(res, "default_lora_bf16_group", name) for name in setups if name != "default_lora_bf16_group"}
    phases = {name: {k: v for k, v in fns[name].last.items() if k.startswith("timing/") or k in (
        "experience_s", "train_s", "ratio_dev_first")} for name in setups}
    return {"settings": {**public_settings(ns), "overrides": base}, "results": res, "default_over": ratios, "phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["decode", "ppo"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--policy", default=None, help="policy dir (default: the workspace's base SmolLM2)")
    ap.add_argument("-S", "--set", action="append", default=[], help="extra param override for the ppo set-ups")
    ns = ap.parse_args()
    result = decode(ns) if ns.what == "decode" else ppo(ns)
    common.emit(f"real_model_{ns.what}", result)


if __name__ == "__main__":
    main()
