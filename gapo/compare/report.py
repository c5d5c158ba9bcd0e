"""The tables, markdown and figure of reports/compare.* from a grid's records (pure but for `plot_compare`).

- `t_quantile(p, df)`, `t_interval(values, confidence)`: Student t intervals over seeds (no scipy).
- `build_tables(records, metric, confidence)`: mean and t-interval over seeds per method (rows) x overall + per
  constraint category (columns), per paradigm, plus the PP-vs-PR table.
- `render_markdown(tables, meta)`, `fmt_ci(ci)`: reports/compare.md's tables.
- `bar_values(tables, cells)`, `plot_compare(tables, out, cells)`: reports/compare.png.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

METHOD_ORDER = ("gapo", "ppo", "sft", "dpo", "kto", "orpo", "simpo")
PARADIGM_NAMES = {"pp": "Preferential Prompt", "pr": "Preferential Response"}

# ============================================================================================ statistics (pure)
def _t_pdf(x: float, df: int) -> float:
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1 + x * x / df) ** (-(df + 1) / 2)


def _t_cdf_upper_half(t: float, df: int, n: int = 4000) -> float:
    """P(0 <= T <= t) by Simpson's rule on the density (smooth and bounded: exact to ~1e-10 for t < 1e3)."""
    h = t / n
    s = _t_pdf(0, df) + _t_pdf(t, df)
    s += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, n))
    return s * h / 3


def t_quantile(p: float, df: int) -> float:
    """Student t quantile for p in (0.5, 1): the t with P(T <= t) = p (bisection on the CDF; no scipy)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    target = p - 0.5
    lo, hi = 0.0, 1.0
    while _t_cdf_upper_half(hi, df) < target:
        hi *= 2
        if hi > 1e6:
            break
    for _ in range(60):
        mid = (lo + hi) / 2
        if _t_cdf_upper_half(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and half-width of the two-sided t confidence interval over `values` (NaN/None dropped):
    {mean, half, n, std}; half is NaN with fewer than two values (no spread to estimate)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "half": math.nan, "n": 0, "std": math.nan}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "half": math.nan, "n": 1, "std": math.nan}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "half": half, "n": n, "std": std}


# ============================================================================================ tables (pure)
def _method_key(m: str) -> tuple:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)

def build_tables(records: Iterable[dict], metric: str = "prompt_level_strict_acc", confidence: float = 0.95,
                 category_metric: str = "inst_level_strict_acc") -> dict:
    """Grid records {method, paradigm, seed, metrics (evaluate.json)} -> the comparison tables.

    Returns {"metric", "confidence", "categories": [...], "main": {paradigm: {method: {"overall": ci,
    "<category>": ci, "seeds": [...]}}}, "pp_vs_pr": {method: {"pp": ci, "pr": ci, "delta": ci}}}, where ci is
    `t_interval` over seeds. A category column is the instruction-level accuracy on that constraint category
    (evaluate's by_category). `delta` is PP − PR paired by seed (seeds present in both)."""
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    for r in records:
        cells.setdefault((r["method"], r["paradigm"]), {})[int(r["seed"])] = r["metrics"]
    categories = sorted({c for runs in cells.values() for m in runs.values() for c in (m.get("by_category") or {})})
    main: dict[str, dict[str, dict]] = {}
    for (method, paradigm), runs in sorted(cells.items(), key=lambda kv: (kv[0][1], _method_key(kv[0][0]))):
        seeds = sorted(runs)
        row = {"overall": t_interval([runs[s].get(metric) for s in seeds], confidence), "seeds": seeds}
        for c in categories:
            row[c] = t_interval([((runs[s].get("by_category") or {}).get(c) or {}).get(category_metric)
                                 for s in seeds], confidence)
        main.setdefault(paradigm, {})[method] = row
    pp_vs_pr: dict[str, dict] = {}
    for method in sorted({m for m, _ in cells}, key=_method_key):
        pp, pr = cells.get((method, "pp"), {}), cells.get((method, "pr"), {})
        if not pp or not pr:
            continue
        both = sorted(set(pp) & set(pr))
        pp_vs_pr[method] = {
            "pp": t_interval([pp[s].get(metric) for s in sorted(pp)], confidence),
            "pr": t_interval([pr[s].get(metric) for s in sorted(pr)], confidence),
            "delta": t_interval([_sub(pp[s].get(metric), pr[s].get(metric)) for s in both], confidence),
        }
    return {"metric": metric, "category_metric": category_metric, "confidence": confidence,
            "categories": categories, "main": main, "pp_vs_pr": pp_vs_pr}


def _sub(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def fmt_ci(ci: dict, scale: float = 100.0) -> str:
    """`83.9 ± 2.1` (percent points); `83.9` alone for one seed; `–` for no value."""
    if not ci or ci.get("n", 0) == 0 or math.isnan(ci["mean"]):
        return "–"
    if math.isnan(ci["half"]):
        return f"{ci['mean'] * scale:.1f}"
    return f"{ci['mean'] * scale:.1f} ± {ci['half'] * scale:.1f}"


def render_markdown(tables: dict, meta: Optional[dict] = None) -> str:
    """reports/compare.md: one main table per paradigm (rows methods; columns overall + categories), then PP vs PR."""
    meta = meta or {}
    conf = int(round(tables["confidence"] * 100))
    lines = ["# Method comparison", ""]
    lines.append(f"Values are percentages: mean ± half-width of the {conf}% t-interval over seeds (n = number of "
                 f"seeds; a single seed shows the value alone). Overall = `{tables['metric']}` on the test prompts; "
                 f"a category column = `{tables['category_metric']}` on that constraint category.")
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines.append("")
    cats = tables["categories"]
    for paradigm, rows in tables["main"].items():
        lines += [f"## {PARADIGM_NAMES.get(paradigm, paradigm)} data (`paradigm: {paradigm}`)", ""]
        lines.append("| method | n | overall | " + " | ".join(cats) + " |")
        lines.append("|---|---|---|" + "---|" * len(cats))
        for method, row in rows.items():
            lines.append(f"| {method} | {row['overall']['n']} | {fmt_ci(row['overall'])} | "
                         + " | ".join(fmt_ci(row[c]) for c in cats) + " |")
        lines.append("")
    if tables["pp_vs_pr"]:
        lines += ["## Preferential Prompt vs Preferential Response", "",
                  f"Overall `{tables['metric']}`; Δ = PP − PR paired by seed.", "",
                  "| method | PP | PR | Δ (PP − PR) |", "|---|---|---|---|"]
        for method, row in tables["pp_vs_pr"].items():
            lines.append(f"| {method} | {fmt_ci(row['pp'])} | {fmt_ci(row['pr'])} | {fmt_ci(row['delta'])} |")
        lines.append("")
    return "\n".join(lines)

# ============================================================================================ figure
def bar_values(tables: dict, cells: list[dict] | None = None) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{paradigm: {method: (value, error below, error above)}} in percent for the figure. With the pooled cells of
    `claims.pooled_cells` the bars are each cell's accuracy over all its seeds and prompts with the interval over
    prompts; without them, the mean over seeds with the t-interval (with 2 seeds, 12.7 standard errors on each side)."""
    if cells:
        out: dict[str, dict[str, tuple[float, float, float]]] = {}
        for c in cells:
            out.setdefault(c["paradigm"], {})[c["method"]] = (c["acc"] * 100, (c["acc"] - c["ci_low"]) * 100,
                                                              (c["ci_high"] - c["acc"]) * 100)
        return out
    return {p: {m: (r["overall"]["mean"] * 100, r["overall"]["half"] * 100, r["overall"]["half"] * 100)
                for m, r in rows.items()} for p, rows in tables["main"].items()}


def plot_compare(tables: dict, out_path: str | os.PathLike, cells: list[dict] | None = None) -> Path:
    """Grouped bars: overall metric per method, one bar per paradigm, error bars from `bar_values`."""
    from gapo.eval.plots import pyplot, save_figure

    plt = pyplot()
    bars = bar_values(tables, cells)
    paradigms = list(bars)
    methods = sorted({m for rows in bars.values() for m in rows}, key=_method_key)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) + 2), 4.5))
    width = 0.8 / max(1, len(paradigms))
    for j, paradigm in enumerate(paradigms):
        rows = bars[paradigm]
        xs = [i + (j - (len(paradigms) - 1) / 2) * width for i in range(len(methods))]
        vals = [rows.get(m, (math.nan,) * 3) for m in methods]  # NaN: no bar
        ax.bar(xs, [v[0] for v in vals], width, yerr=[[v[1] for v in vals], [v[2] for v in vals]], capsize=3,
               label=PARADIGM_NAMES.get(paradigm, paradigm))
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods)
    ax.set_ylabel(f"{tables['metric']} (%)")
    ax.set_ylim(0, 100)  # a percentage; a t-interval wider than that (2 seeds) is cut at the axis
    level = int(round(tables["confidence"] * 100))
    ax.set_title(f"Method comparison (pooled over seeds, {level}% CI over prompts)" if cells
                 else f"Method comparison (mean, {level}% CI over seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_path)
