"""Paired comparison of two policies scored on the same IFEval prompts (the final policy against the SFT policy).

Pure functions: verdict lists in, numbers out; no model, no file. Each prompt is one pair (the two policies'
responses to it), so the tests and intervals are paired ones:
- `mcnemar_exact(b, c)`: exact two-sided McNemar test of a paired binary outcome, the binomial test of the
  discordant pairs: p = min(1, 2 · P(Bin(b + c, 1/2) <= min(b, c))); 1 when there is no discordant pair.
- `paired_normal_ci(b, c, n)`: the Wald interval of a paired difference of proportions,
  d = (b − c)/n, Var(d) = ((b + c)/n − d²)/n (Agresti, Categorical Data Analysis, §10.1).
- `paired_bootstrap(diff, weight, ...)`: prompts resampled with replacement (seeded numpy PCG64), the statistic
  Σ diff / Σ weight recomputed per resample. Prompt level: diff = pass_final − pass_sft and weight = 1; instruction
  level: diff = (instructions passed by final − by SFT) and weight = instructions of the prompt, so the instructions
  of a prompt stay together. The interval is the percentile interval; the two-sided p-value is that of the
  shifted null, (1 + #{|d* − d| >= |d|}) / (B + 1).
- `compare(final, sft, ...)`: the `vs_sft` block of metrics/evaluate.json from both policies' verdicts
  (gapo.eval.scoring.score) and response lengths.
"""
from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist
from typing import Any, Sequence

PROMPT_METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc")
INST_METRICS = ("inst_level_strict_acc", "inst_level_loose_acc")
_CHUNK = 1000  # bootstrap resamples drawn per numpy call (bounds memory; fixed, so results do not depend on it)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b pairs (first passes, second fails) and c pairs (the reverse)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def paired_normal_ci(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(d, low, high): the paired difference of proportions (b − c)/n and its Wald interval."""
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b + c <= n and n > 0, got b={b}, c={c}, n={n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    d = (b - c) / n
    se = math.sqrt(max((b + c) / n - d * d, 0.0) / n)
    return d, d - z * se, d + z * se


def paired_bootstrap(diff: Sequence[float], weight: Sequence[float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired (cluster) bootstrap of Σ diff / Σ weight over units resampled with replacement.

    Returns `delta` (the statistic on the data), `ci_low` / `ci_high` (percentile interval at `level`) and
    `p_value` (two-sided, shifted null). The same (diff, weight, resamples, seed) always gives the same numbers.
    """
    import numpy as np

    d = np.asarray(diff, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if d.ndim != 1 or d.shape != w.shape or d.size == 0:
        raise ValueError(f"diff and weight must be non-empty and of one length, got {d.shape} and {w.shape}")
    if resamples <= 0:
        raise ValueError(f"resamples must be > 0, got {resamples}")
    if not (w > 0).all():
        raise ValueError("every weight must be > 0")
    delta = float(d.sum() / w.sum())
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        idx = rng.integers(0, d.size, size=(k, d.size))
        stats[start:start + k] = d[idx].sum(axis=1) / w[idx].sum(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    extreme = int((np.abs(stats - delta) >= abs(delta) - 1e-12).sum())
    return {"delta": delta, "ci_low": float(low), "ci_high": float(high),
            "p_value": (1 + extreme) / (resamples + 1)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def compare(final: Sequence[dict], sft: Sequence[dict], final_tokens: Sequence[float] | None = None,
            sft_tokens: Sequence[float] | None = None, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The paired final-vs-SFT block from per-prompt verdicts of both policies on the same prompts, in one order.

    Each verdict is a `gapo.eval.scoring.score` row: `key`, `instruction_id_list`, the prompt-level booleans and
    the instruction-level lists. Per metric: `final`, `sft`, `delta` (final − SFT), the paired-bootstrap `ci95_low`,
    `ci95_high` and `p_bootstrap`; prompt-level metrics add the Wald interval (`normal_ci95_low/high`), the
    discordant counts `final_only` / `sft_only` and the exact McNemar `p_mcnemar`. `by_instruction` gives, per
    instruction id, the instruction-level accuracies of both and their difference.
    """
    if len(final) != len(sft) or not final:
        raise ValueError(f"need the same non-zero number of verdicts, got {len(final)} and {len(sft)}")
    for i, (f, s) in enumerate(zip(final, sft)):
        if f["key"] != s["key"] or list(f["instruction_id_list"]) != list(s["instruction_id_list"]):
            raise ValueError(f"verdict {i}: final and SFT verdicts are not for the same prompt "
                             f"(keys {f['key']!r} and {s['key']!r})")
    n = len(final)
    out: dict[str, Any] = {"n_prompts": n, "n_instructions": sum(len(f["instruction_id_list"]) for f in final),
                           "resamples": resamples, "seed": seed}
    for metric in PROMPT_METRICS:
        a = [bool(f[metric]) for f in final]
        b = [bool(s[metric]) for s in sft]
        final_only = sum(x and not y for x, y in zip(a, b))
        sft_only = sum(y and not x for x, y in zip(a, b))
        boot = paired_bootstrap([float(x) - float(y) for x, y in zip(a, b)], [1.0] * n, resamples, seed)
        d, lo, hi = paired_normal_ci(final_only, sft_only, n)
        out[metric] = {"final": sum(a) / n, "sft": sum(b) / n, "delta": d,
                       "ci95_low": boot["ci_low"], "ci95_high": boot["ci_high"], "p_bootstrap": boot["p_value"],
                       "normal_ci95_low": lo, "normal_ci95_high": hi,
                       "final_only": final_only, "sft_only": sft_only, "p_mcnemar": mcnemar_exact(final_only, sft_only)}
    for metric in INST_METRICS:
        pa = [sum(bool(x) for x in f[metric]) for f in final]
        pb = [sum(bool(x) for x in s[metric]) for s in sft]
        counts = [len(f[metric]) for f in final]
        total = sum(counts)
        boot = paired_bootstrap([x - y for x, y in zip(pa, pb)], counts, resamples, seed)
        out[metric] = {"final": sum(pa) / total, "sft": sum(pb) / total, "delta": boot["delta"],
                       "ci95_low": boot["ci_low"], "ci95_high": boot["ci_high"], "p_bootstrap": boot["p_value"]}
    if final_tokens is not None and sft_tokens is not None:
        mf, ms = _mean(list(final_tokens)), _mean(list(sft_tokens))
        out["mean_response_tokens"] = {"final": mf, "sft": ms, "delta": mf - ms}
    cells: dict[str, dict[str, list[bool]]] = {}
    for f, s in zip(final, sft):
        for j, iid in enumerate(f["instruction_id_list"]):
            cell = cells.setdefault(iid, {"fs": [], "ss": [], "fl": [], "sl": []})
            cell["fs"].append(bool(f["inst_level_strict_acc"][j]))
            cell["ss"].append(bool(s["inst_level_strict_acc"][j]))
            cell["fl"].append(bool(f["inst_level_loose_acc"][j]))
            cell["sl"].append(bool(s["inst_level_loose_acc"][j]))
    by_id = {}
    for iid, c in sorted(cells.items()):
        fs, ss, fl, sl = (_mean(c[k]) for k in ("fs", "ss", "fl", "sl"))
        by_id[iid] = {"count": len(c["fs"]), "final_inst_level_strict_acc": fs, "sft_inst_level_strict_acc": ss,
                      "delta_inst_level_strict_acc": fs - ss, "final_inst_level_loose_acc": fl,
                      "sft_inst_level_loose_acc": sl, "delta_inst_level_loose_acc": fl - sl}
    out["by_instruction"] = by_id
    return out
