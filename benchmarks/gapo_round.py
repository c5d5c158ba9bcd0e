"""A full GAPO round (fakes + RM retrain + PPO) vs a plain PPO round against a frozen RM, same settings, one process.

Both call `gapo.train.adversarial.run_round` on the same players (SFT policy, warm-up RM, new critic): with
`method=gapo` the round generates `adversarial.prompts_per_round` fakes, retrains the RM on them and then runs
`ppo.episodes_per_round` PPO iterations; with `method=ppo` only the PPO iterations run (the RM is never updated).
Rounds alternate GAPO, PPO, GAPO, PPO, ... and per-phase times come from the round record's `timing/<phase>_s`
keys. The ratio is computed on the round's training work (fakes + RM retrain + PPO); the per-round health eval
and checkpoint save are the same for both methods and reported separately.

    python benchmarks/gapo_round.py [--pairs 2] [-S ppo.generate_max_len=32 ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# Short warm-ups: only their existence matters here, not their quality.
PREP = ["sft.max_steps=10", "sft.eval_examples=0", "reward.warmup_examples=64", "reward.eval_examples=0"]
PHASES = ("fakes", "rm_retrain", "rollout", "ppo_forward", "reward", "ppo_update", "eval")


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2, help="GAPO/PPO round pairs (the first pair is a warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="gapo_round")
    ns = ap.parse_args(argv)
    ws = common.DEFAULT_WS
    common.ensure_workspace(ws)
    for st in ("sft", "rm_warmup"):
        if not (ws / "checkpoints" / st / "config.json").exists():
            common.gapo(ws, st, overrides=common.WS_OVERRIDES + PREP)
    params = common.load_params(ns.overrides + [f"runtime.threads={ns.threads}", "method=gapo"])
    from gapo import runtime
    from gapo.paths import Workspace
    from gapo.train import engine as E
    from gapo.train.adversarial import load_players, run_round

    E.init_distributed()
    runtime.setup(params, seed_offset=4)
    torch.set_num_threads(ns.threads)
    W = Workspace(ws)
    players = load_players(params, W, start_round=0)
    ppo_params = params.model_copy(update={"method": "ppo"})
    recs: dict[str, list[dict]] = {"gapo": [], "ppo": []}
    load_before = common.loadavg()
    k = 0
    for pair in range(ns.pairs):
        for method, p in (("gapo", params), ("ppo", ppo_params)):
            k += 1
            t0 = time.perf_counter()
            rec = run_round(players, p, W, k, "bench")
            rec["wall_with_save_s"] = time.perf_counter() - t0
            recs[method].append(rec)
            print(f"[bench] pair {pair} {method}: {rec['seconds']}s load {common.loadavg()}", file=sys.stderr)
        out = summarize(recs, params, ns, load_before)  # after every pair: a partial result survives an interrupt
        common.emit(ns.name, out)
    return out


def summarize(recs: dict, params, ns, load_before) -> dict:

    use = {m: (r[1:] if len(r) > 1 else r) for m, r in recs.items()}

    def phase(m, ph):
        return round(statistics.median(r.get(f"timing/{ph}_s", 0.0) for r in use[m]), 3)

    out = {"settings": {k2: getattr(params.ppo, k2) for k2 in ("rollout_batch_size", "micro_rollout_batch_size",
                                                                "train_batch_size", "generate_max_len",
                                                                "episodes_per_round")}
           | {"prompts_per_round": params.adversarial.prompts_per_round,
              "eval_prompts": params.adversarial.eval_prompts, "threads": ns.threads, "pairs": ns.pairs,
              "warm_up_pair_dropped": len(recs["ppo"]) > 1}}
    for m in ("gapo", "ppo"):
        phases = {ph: phase(m, ph) for ph in PHASES}
        train = sum(v for ph, v in phases.items() if ph != "eval")
        out[m] = {"phases_s": phases, "train_work_s": round(train, 3),
                  "round_s": round(statistics.median(r["seconds"] for r in use[m]), 3),
                  "round_with_save_s": round(statistics.median(r["wall_with_save_s"] for r in use[m]), 3),
                  "all_round_s": [r["seconds"] for r in recs[m]]}
    out["ratio_gapo_over_ppo_train_work"] = round(out["gapo"]["train_work_s"] / out["ppo"]["train_work_s"], 3)
    out["ratio_gapo_over_ppo_round"] = round(out["gapo"]["round_s"] / out["ppo"]["round_s"], 3)
    out["load"] = {"before": load_before, "after": common.loadavg()}
    out["pairs_done"] = len(recs["ppo"])
    return out


if __name__ == "__main__":
    main()
