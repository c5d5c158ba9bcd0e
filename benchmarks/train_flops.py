"""RM training samples/s and SFT tokens/s, with achieved FLOP/s as a fraction of this machine's matmul peak.

Both loops are the stages' own pieces on the DEFAULT profile's models and batch sizes: SFT = llama-small,
`sft.optim.micro_batch_size` rows of data/sft/train (gapo.train.sft: tokenize_sft_rows, length_grouped_batches,
collate_sft, completion_loss) through a DeepSpeed engine; RM = MiniLM, `reward.optim.micro_batch_size` rows of
data/rm/train through `gapo.train.reward.train_reward_model` (the function the stage and the rounds call).
Each loop also runs with autocast off (`sft.autocast=none`, `models.reward_autocast=none`: fp32 matmuls) on the same
batches, side by side, so the table shows what bf16 autocast buys on this machine.
FLOPs are counted by torch's FlopCounterMode on the very same batches (forward + backward) in an untimed first
pass that doubles as the warm-up. Peak = best fp32 n×n matmul on the same threads, measured
before and after the training loops (the max is used). Achieved FLOP/s = counted FLOPs / timed seconds.

    python benchmarks/train_flops.py [--steps 4] [--threads 2] [--repeats 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def count_flops(engine, batches, loss_fn) -> float:
    """FLOPs of forward + backward on `batches`, counted by FlopCounterMode during an untimed pass that also
    serves as the warm-up (allocator, optimizer state). Optimizer-step FLOPs are not counted (O(params), small)."""
    from torch.utils.flop_counter import FlopCounterMode

    engine.train()
    total = 0.0
    for b in batches:
        with FlopCounterMode(display=False) as fc:
            loss = loss_fn(engine, b)
            engine.backward(loss)
        engine.step()
        total += fc.get_total_flops()
    return total


def sft_setup(params, ws: Path, steps: int):
    from gapo.io import read_jsonl
    from gapo.models.loading import load_policy
    from gapo.models.prompting import pad_token_id
    from gapo.train import engine as E
    from gapo.train.sft import collate_sft, length_grouped_batches, tokenize_sft_rows

    optim = params.sft.optim
    model, tok = load_policy(ws / "models" / "policy", params.models)
    rows = read_jsonl(ws / "data" / "sft" / "train.jsonl")
    train = tokenize_sft_rows(rows, tok, params.sft.max_seq_len, "sft")
    order = length_grouped_batches([len(x) for x, _ in train], optim.micro_batch_size, params.seed)[:steps]
    batches = [collate_sft([train[i] for i in b], pad_token_id(tok)) for b in order]
    engine = E.build_train_engine(model, params, optim, 10**6)
    return engine, batches


def sft_loss_fn(mode: str, models_cfg):
    """The SFT stage's training forward: completion loss under `sft.autocast` (`mode`), as gapo.train.sft runs it."""
    from gapo.models.loading import autocast_context
    from gapo.train.sft import completion_loss

    def loss(model, batch):
        with autocast_context(batch["input_ids"].device.type, mode, models_cfg):
            return completion_loss(model, batch)[0]

    return loss


def rm_setup(params, ws: Path, steps: int, autocast: str | None = None):
    from gapo.models.loading import load_reward_model
    from gapo.train import engine as E
    from gapo.models.reward_model import ENCODER, collate
    from gapo.train.reward import batches_by_key, load_rm_rows

    optim = params.reward.optim
    models = params.models if autocast is None else params.models.model_copy(update={"reward_autocast": autocast})
    model, tok = load_reward_model(ws / "models" / "reward", models)
    rows = load_rm_rows(ws / "data" / "rm" / "train.jsonl", optim.micro_batch_size * steps, seed=params.seed)
    enc = ENCODER.encode(tok, rows, params.reward.max_length)
    order = batches_by_key(rows, [len(e[0]) for e in enc], optim.micro_batch_size, params.seed)[:steps]
    batches = [collate([enc[i] for i in b], tok) for b in order]
    engine = E.build_train_engine(model, params, optim, 10**6)
    return engine, batches


def rm_loss(model, batch):
    from gapo.models.reward_model import ENCODER

    return ENCODER.loss(ENCODER.score(model, batch), batch)


def timed_loop(engine, batches, loss_fn) -> float:
    engine.train()
    t0 = time.perf_counter()
    for b in batches:
        loss = loss_fn(engine, b)
        engine.backward(loss)
        engine.step()
        loss.item()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="micro-batches per timed loop")
    ap.add_argument("--threads", type=int, default=2, help="runtime.threads (the stages' default is 2)")
    ap.add_argument("--repeats", type=int, default=1, help="alternations SFT/RM (medians reported)")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="train_flops")
    ns = ap.parse_args(argv)
    ws = common.ensure_workspace()
    params = common.load_params(ns.overrides + [f"runtime.threads={ns.threads}"])
    from gapo import runtime
    from gapo.train import engine as E

    E.init_distributed()
    runtime.setup(params)
    torch.set_num_threads(ns.threads)
    peaks = [common.matmul_peak(ns.threads)]
    sft_engine, sft_batches = sft_setup(params, ws, ns.steps)
    sft32_engine, _ = sft_setup(params, ws, ns.steps)
    rm_engine, rm_batches = rm_setup(params, ws, ns.steps)
    # the same RM loop with fp32 matmuls, side by side: what models.reward_autocast buys on this machine
    rm32_engine, _ = rm_setup(params, ws, ns.steps, autocast="none")
    sft_loss, sft32_loss = sft_loss_fn(params.sft.autocast, params.models), sft_loss_fn("none", params.models)
    sft_flops = count_flops(sft_engine, sft_batches, sft_loss)
    rm_flops = count_flops(rm_engine, rm_batches, rm_loss)
    count_flops(rm32_engine, rm_batches, rm_loss)  # warm-up
    count_flops(sft32_engine, sft_batches, sft32_loss)
    t = {"sft": [], "sft_fp32": [], "rm": [], "rm_fp32": []}
    for _ in range(ns.repeats):
        t["sft"].append(timed_loop(sft_engine, sft_batches, sft_loss))
        t["sft_fp32"].append(timed_loop(sft32_engine, sft_batches, sft32_loss))
        t["rm"].append(timed_loop(rm_engine, rm_batches, rm_loss))
        t["rm_fp32"].append(timed_loop(rm32_engine, rm_batches, rm_loss))
    peaks.append(common.matmul_peak(ns.threads))
    peak = max(peaks)
    bf16_peak = common.matmul_peak(ns.threads, dtype="bfloat16")
    sft_s, rm_s = statistics.median(t["sft"]), statistics.median(t["rm"])
    rm32_s, sft32_s = statistics.median(t["rm_fp32"]), statistics.median(t["sft_fp32"])
    sft_tokens = sum(int(b["attention_mask"].sum()) for b in sft_batches)
    sft_padded = sum(b["input_ids"].numel() for b in sft_batches)
    rm_samples = sum(b["input_ids"].size(0) for b in rm_batches)
    out = {
        "settings": {"threads": ns.threads, "steps": ns.steps, "repeats": ns.repeats,
                     "sft_micro_batch": params.sft.optim.micro_batch_size, "sft_max_seq_len": params.sft.max_seq_len,
                     "rm_micro_batch": params.reward.optim.micro_batch_size, "rm_max_length": params.reward.max_length},
        "matmul_peak_gflops": round(peak / 1e9, 2), "bf16_matmul_peak_gflops": round(bf16_peak / 1e9, 2),
        "matmul_peak_samples_gflops": [round(p / 1e9, 2) for p in peaks],
        "sft": {"tokens_per_s": round(sft_tokens / sft_s, 1), "padded_tokens_per_s": round(sft_padded / sft_s, 1),
                "samples_per_s": round(sum(b["input_ids"].size(0) for b in sft_batches) / sft_s, 2),
                "gflops_per_s": round(sft_flops / sft_s / 1e9, 2),
                "fraction_of_peak": round(sft_flops / sft_s / peak, 3),
                "autocast": params.sft.autocast, "seconds": [round(x, 3) for x in t["sft"]]},
        "sft_fp32": {"tokens_per_s": round(sft_tokens / sft32_s, 1),
                     "gflops_per_s": round(sft_flops / sft32_s / 1e9, 2),
                     "fraction_of_peak": round(sft_flops / sft32_s / peak, 3),
                     "speedup_of_autocast": round(sft32_s / sft_s, 2), "seconds": [round(x, 3) for x in t["sft_fp32"]]},
        "rm": {"samples_per_s": round(rm_samples / rm_s, 2),
               "gflops_per_s": round(rm_flops / rm_s / 1e9, 2), "fraction_of_peak": round(rm_flops / rm_s / peak, 3),
               "reward_autocast": params.models.reward_autocast, "seconds": [round(x, 3) for x in t["rm"]]},
        "rm_fp32": {"samples_per_s": round(rm_samples / rm32_s, 2),
                    "gflops_per_s": round(rm_flops / rm32_s / 1e9, 2),
                    "fraction_of_peak": round(rm_flops / rm32_s / peak, 3),
                    "speedup_of_autocast": round(rm32_s / rm_s, 2),
                    "seconds": [round(x, 3) for x in t["rm_fp32"]]},
        "load": common.loadavg(),
    }
    common.emit(ns.name, out)
    return out


if __name__ == "__main__":
    main()
