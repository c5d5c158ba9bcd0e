"""What an adversarial round measures and where it is written: the round-metric columns (the one list the CSV,
the PNG figure and dvc.yaml's plots derive from or are tested against), the health metrics of the game as a pure
function, the PPO phase's summary, the per-phase clock, and metrics/adversarial.json + plots/adversarial.csv.

API
- `ROUND_COLUMNS`: the columns of plots/adversarial.csv, in order
- `DYNAMICS_PANELS`: {panel: columns} of the per-round dynamics plots (dvc.yaml `plots`, gapo.eval.plots);
  `DYNAMICS_COLUMNS`: "round" + every plotted column; `HEADLINE`: the columns printed after each round
- `health_metrics(fake_logits, positive_logits, verdicts, greedy_verdicts, kls, entropies, lengths, stopped, pp,
  score)` -> dict                                             pure: the 18 health numbers of one round
- `ppo_phase_record(stats, steps)` -> dict                    the round record's PPO columns
- `PhaseClock`: `with clock.phase(name):`, `clock.add(seconds_by_phase)`, `clock.elapsed()`, `clock.timings()`
- `write_outputs(ws, baseline, rounds, total_rounds)` -> metrics dict
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Mapping, Optional, Sequence

from gapo.paths import Workspace

# The dynamics docs/method.md reads the game by: the discriminator's grip on fresh samples, the generator's drift,
# and whether the reward follows the verifier (hack_gap > 0: the RM pays for what the verifier rejects).
DYNAMICS_PANELS = {
    "discriminator": ("rm_acc_fakes", "rm_auc", "fool_rate"),
    "generator": ("mean_reward", "kl", "entropy"),
    "reward_hacking": ("verifier_pass_rate", "hack_gap"),
}
DYNAMICS_COLUMNS = ("round", *(c for cols in DYNAMICS_PANELS.values() for c in cols))
ROUND_COLUMNS = (*DYNAMICS_COLUMNS, "verifier_pass_rate_greedy", "rm_verifier_auc", "rm_acc", "rm_pp_acc",
                 "rm_prob_fakes", "rm_prob_positives", "response_length", "rollout_reward", "rollout_pass_rate",
                 "fakes_pass_rate", "policy_loss", "value_loss", "rm_loss", "n_fakes_in_rm_set",
                 "rollout_rm_verifier_auc", "rollout_rm_verifier_auc_within", "ratio_dev_first", "rollout_stopped",
                 "eos_rate", "seconds")
HEADLINE = ("rm_auc", "fool_rate", "mean_reward", "kl", "verifier_pass_rate", "hack_gap")

# (clock phase, the ppo_iteration stat holding its seconds)
PPO_TIMINGS = (("rollout", "timing/rollout_s"), ("ppo_forward", "timing/forward_s"), ("reward", "timing/reward_s"),
               ("ppo_update", "train_s"))


# ============================================================================================ health
def _share(flags: Sequence[Optional[bool]]) -> float:
    """Share of True among the defined flags (None: a prompt the verifier cannot check); NaN if none is defined."""
    kept = [v for v in flags if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def health_metrics(fake_logits, positive_logits, verdicts: Sequence[Optional[bool]],
                   greedy_verdicts: Sequence[Optional[bool]], kls: Sequence[float], entropies: Sequence[float],
                   lengths: Sequence[float], stopped: Sequence[bool], pp: Mapping[str, float], score: str) -> dict:
    """The health of the game from one round's measurements on fresh samples of the generator:

    `fake_logits` / `positive_logits`: RM logits (1-D float tensors) of the samples and of held-out real answers;
    `verdicts`: the verifier on each sample (None: not checkable); `greedy_verdicts`: on the greedy answers to
    the same prompts; `kls` / `entropies` / `lengths` / `stopped`: per sample (mean per-token KL to the reference
    and entropy in nats, response tokens, ended on a stop id); `pp`: the RM on held-out preferential-prompt
    pairs (`accuracy`, `auc`; empty when there are none); `score`: `reward.score` ("prob" or "logit").

    rm_acc_fakes: share of samples the RM rejects (p < 0.5), fool_rate = 1 − rm_acc_fakes; rm_acc / rm_auc:
    samples vs positives; mean_reward: the PPO reward of the samples; hack_gap = mean RM probability − verifier
    pass rate; rm_verifier_auc: the RM logit at telling passing from failing samples (0.5: the discriminator
    ignores constraint satisfaction; NaN when every checked sample passes or every one fails).
    """
    import torch

    from gapo.train.reward import roc_auc

    fake_p, pos_p = fake_logits.sigmoid(), positive_logits.sigmoid()
    pass_rate = _share(verdicts)
    checked = [(float(x), float(v)) for x, v in zip(fake_logits.tolist(), verdicts) if v is not None]
    rm_verifier_auc = roc_auc([c[0] for c in checked], [c[1] for c in checked]) if checked else float("nan")
    rm_acc_fakes = float((fake_p < 0.5).float().mean())
    scores = torch.cat([positive_logits, fake_logits]).tolist()
    labels = [1.0] * len(positive_logits) + [0.0] * len(fake_logits)
    correct = (pos_p >= 0.5).float().sum() + (fake_p < 0.5).float().sum()
    reward_values = fake_p if score == "prob" else fake_logits
    return {
        "rm_acc_fakes": rm_acc_fakes, "fool_rate": 1.0 - rm_acc_fakes,
        "rm_acc": float(correct) / len(labels), "rm_auc": roc_auc(scores, labels),
        "rm_pp_acc": pp.get("accuracy", float("nan")), "rm_pp_auc": pp.get("auc", float("nan")),
        "rm_prob_fakes": float(fake_p.mean()), "rm_prob_positives": float(pos_p.mean()) if len(pos_p) else float("nan"),
        "mean_reward": float(reward_values.mean()),
        "kl": _mean(kls), "entropy": _mean(entropies),
        "verifier_pass_rate": pass_rate, "hack_gap": float(fake_p.mean()) - pass_rate,
        "rm_verifier_auc": rm_verifier_auc,
        "verifier_pass_rate_greedy": _share(greedy_verdicts),
        "response_length": _mean(lengths), "eos_rate": _mean(stopped),
        "n_eval": len(fake_logits),
    }


# ============================================================================================ PPO phase
def nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def ppo_phase_record(stats: Sequence[dict], steps: int) -> dict:
    """The round record's PPO columns from the episodes' `ppo_iteration` stats: rollout numbers averaged over the
    episodes, losses and β of the last one, the first-step ratio deviation at its worst."""
    last = stats[-1]
    return dict(rollout_reward=sum(s["reward"] for s in stats) / len(stats),
                rollout_rm_verifier_auc=nanmean([s["rm_verifier_auc"] for s in stats]),
                rollout_rm_verifier_auc_within=nanmean([s.get("rm_verifier_auc_within", float("nan"))
                                                        for s in stats]),
                ratio_dev_first=max(s["ratio_dev_first"] for s in stats),
                rollout_pass_rate=sum(s["pass_rate"] for s in stats) / len(stats),
                rollout_stopped=sum(s["stopped"] for s in stats) / len(stats),
                rollout_kl=last["kl"], policy_loss=last["policy_loss"], value_loss=last["value_loss"],
                clipfrac=last["clipfrac"], kl_coef=last["kl_coef"], ppo_steps=steps, ppo=list(stats))


def ppo_timings(stats: Sequence[dict]) -> dict[str, float]:
    """Seconds per PPO phase (rollout, forward, reward, update) summed over the episodes."""
    return {phase: sum(s.get(key, 0.0) for s in stats) for phase, key in PPO_TIMINGS}


class PhaseClock:
    """Seconds per phase of a round, for record["timing/<phase>_s"] (docs/benchmarks.md), and since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add({name: time.perf_counter() - t})

    def add(self, seconds: Mapping[str, float]) -> None:
        for name, s in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def timings(self) -> dict[str, float]:
        return {f"timing/{p}_s": round(v, 3) for p, v in self.seconds.items()}


# ============================================================================================ outputs
def _nan_to_none(obj: Any) -> Any:
    """NaN (an undefined AUC, a pass rate without checkable prompts) is not valid JSON: write null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _flat(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(int(v)) if isinstance(v, int) else f"{v:.6g}"


def write_outputs(ws: Workspace, baseline: dict, rounds: list[dict], total_rounds: int) -> dict:
    """metrics/adversarial.json (the last round's numbers at the top level, SFT→last deltas, the per-round list)
    and plots/adversarial.csv (round 0 = SFT policy + warm-up RM, then one row per completed round)."""
    from gapo.io import atomic_file, write_json

    per_round = [_flat(baseline)] + [_flat(r) for r in rounds]
    last = per_round[-1]
    first_pass, last_pass = per_round[0].get("verifier_pass_rate"), last.get("verifier_pass_rate")
    metrics = {**last, "rounds_completed": len(rounds), "rounds": total_rounds,
               "pass_rate_sft": first_pass, "pass_rate_last": last_pass,
               "pass_rate_delta": (last_pass - first_pass) if first_pass is not None and last_pass is not None else None,
               "per_round": per_round}
    metrics = _nan_to_none(metrics)
    write_json(ws.metrics_file("adversarial"), metrics)
    ws.plots.mkdir(parents=True, exist_ok=True)
    with atomic_file(ws.plots / "adversarial.csv") as fh:
        fh.write(",".join(ROUND_COLUMNS) + "\n")
        for r in per_round:
            fh.write(",".join(_cell(r.get(c)) for c in ROUND_COLUMNS) + "\n")
    return metrics
