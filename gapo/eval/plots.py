"""PNG figures of the curves the training stages write: adversarial dynamics per round and SFT / RM losses.

Inputs are the DVC plot files (plots/adversarial.csv: one row per round with `round, rm_acc_fakes, rm_auc,
fool_rate, mean_reward, kl, entropy, verifier_pass_rate, hack_gap`, optionally `rm_pp_acc` and more, as
gapo.train.adversarial writes it; plots/sft_loss.csv and plots/rm_loss.csv:
`step, loss`). Outputs go to reports/: `adversarial_dynamics.png` (four panels: the discriminator, the
generator, reward against the verifier, drift from the reference) and `loss_curves.png`. Empty cells read
as NaN and are skipped, so a round without a verifier still plots. `paired_vs_sft.png` is drawn from the `vs_sft`
block of metrics/evaluate.json (gapo.eval.paired.compare): both policies' accuracies, the paired differences with
their 95% intervals, and the difference per instruction id. Matplotlib runs on the Agg backend and
PNGs carry no timestamp, so the same CSV gives the same bytes.

API
    read_curve_csv(path, required) -> dict[column, list[float]]
    plot_adversarial(csv_path, out_path) -> Path
    plot_losses({"SFT": csv, "reward model": csv}, out_path) -> Path
    plot_paired(vs_sft | None, out_path, note) -> Path    the final-vs-SFT figure (or one saying why there is none)
    make_report_plots(ws, evaluate_metrics=None) -> list[Path]     every figure whose CSV exists (+ the paired one)
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from gapo.errors import DataError
from gapo.train.round_metrics import DYNAMICS_COLUMNS

ADVERSARIAL_COLUMNS = DYNAMICS_COLUMNS  # the dvc.yaml plots of the rounds draw the same columns
LOSS_COLUMNS = ("step", "loss")
PAIRED_FIGURE = "paired_vs_sft.png"
PAIRED_METRICS = (("prompt_level_strict_acc", "prompt\nstrict"), ("prompt_level_loose_acc", "prompt\nloose"),
                  ("inst_level_strict_acc", "instruction\nstrict"), ("inst_level_loose_acc", "instruction\nloose"))


def read_curve_csv(path: str | os.PathLike, required: Sequence[str]) -> dict[str, list[float]]:
    """Numeric columns of a curve CSV; DataError naming file, line and column on anything malformed."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"curve file {path}: file not found") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"curve file {path} line 1: missing column(s) {', '.join(missing)} "
                            f"(header: {', '.join(header) or 'empty'})")
        cols: dict[str, list[float]] = {h: [] for h in header}
        for lineno, row in enumerate(reader, 2):
            for raw_key, raw in row.items():
                if raw_key is None:
                    raise DataError(f"curve file {path} line {lineno}: more cells than header columns")
                text = (raw or "").strip()
                try:
                    value = float(text) if text else math.nan
                except ValueError:
                    raise DataError(f"curve file {path} line {lineno}: column {raw_key.strip()!r} = {text!r} "
                                    "is not a number") from None
                cols[raw_key.strip()].append(value)
    if not cols[required[0]]:
        raise DataError(f"curve file {path}: no data rows")
    return cols


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_path: str | os.PathLike) -> Path:
    from gapo.io import atomic_file

    out_path = Path(out_path)
    with atomic_file(out_path, "wb") as fh:
        # no Software/date metadata: byte-stable output for DVC
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return out_path


# Series sharing a panel differ in marker and dash too, so one drawn exactly over another stays visible.
_SECOND = {"marker": "s", "linestyle": "--", "markersize": 6, "markerfacecolor": "none"}
_THIRD = {"marker": "^", "linestyle": ":"}


def _line(ax, x: list[float], y: list[float], label: str, **kw) -> bool:
    pts = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if not pts:
        return False
    kw.setdefault("marker", "o")
    kw.setdefault("markersize", 4)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **kw)
    return True


def plot_adversarial(csv_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Four panels over rounds: RM accuracy/AUC on fakes, fool and verifier pass rates, reward vs hack_gap, KL/entropy."""
    c = read_curve_csv(csv_path, ADVERSARIAL_COLUMNS)
    plt = pyplot()
    r = c["round"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    ax = axes[0, 0]
    _line(ax, r, c["rm_acc_fakes"], "RM accuracy on fakes")
    _line(ax, r, c["rm_auc"], "RM AUC (real vs fake)", **_SECOND)
    if "rm_pp_acc" in c:  # optional column: does the RM still read the constraints?
        _line(ax, r, c["rm_pp_acc"], "RM accuracy on preferential-prompt pairs", **_THIRD)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(title="Discriminator: reward model", ylabel="accuracy / AUC", ylim=(-0.02, 1.02))
    ax = axes[0, 1]
    _line(ax, r, c["fool_rate"], "fool rate (fakes scored as real)")
    _line(ax, r, c["verifier_pass_rate"], "verifier pass rate (IFEval checkers)", **_SECOND)
    ax.set(title="Generator: policy samples", ylabel="fraction of samples", ylim=(-0.02, 1.02))
    ax = axes[1, 0]
    _line(ax, r, c["mean_reward"], "mean RM reward")
    _line(ax, r, c["hack_gap"], "hack gap (mean RM prob − verifier pass rate)", color="tab:red", **_SECOND)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set(title="Reward against the verifier", xlabel="adversarial round", ylabel="reward / gap")
    ax = axes[1, 1]
    _line(ax, r, c["kl"], "KL to reference", color="tab:purple")
    ax.set(title="Policy drift", xlabel="adversarial round", ylabel="KL (nats / token)")
    ax2 = ax.twinx()
    _line(ax2, r, c["entropy"], "entropy", color="tab:green", **_SECOND)
    ax2.set_ylabel("entropy (nats / token)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="best")
    for a in axes.flat[:3]:
        a.legend(fontsize=8, loc="best")
    for a in [*axes.flat, ax2]:
        a.ticklabel_format(axis="y", useOffset=False)  # "+6.343" offsets hide the actual values
    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    rounds = [int(x) for x in r if not math.isnan(x)]
    title = f"GAPO adversarial dynamics, rounds {min(rounds)}–{max(rounds)}" if rounds else "GAPO adversarial dynamics"
    if rounds and min(rounds) == 0:
        title += " (round 0 = SFT policy and warm-up RM)"
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_path)


def _moving_average(y: list[float], window: int) -> list[float]:
    out: list[float] = []
    acc: list[float] = []
    for v in y:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        finite = [a for a in acc if not math.isnan(a)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


def plot_losses(curves: Mapping[str, str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """One panel per curve (`name -> step,loss CSV`): the raw loss and a moving average over ~5% of the steps."""
    if not curves:
        raise ValueError("no loss curves given")
    data = {name: read_curve_csv(path, LOSS_COLUMNS) for name, path in curves.items()}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    for ax, (name, c) in zip(axes[0], data.items()):
        steps, loss = c["step"], c["loss"]
        _line(ax, steps, loss, "loss", alpha=0.35 if len(loss) > 20 else 1.0,
              **({"marker": None} if len(loss) > 20 else {}))
        if len(loss) > 20:
            window = max(2, len(loss) // 20)
            _line(ax, steps, _moving_average(loss, window), f"moving average ({window} steps)", marker=None)
        ax.set(title=f"{name} training loss", xlabel="optimizer step", ylabel="loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def plot_paired(vs_sft: Mapping | None, out_path: str | os.PathLike, note: str = "") -> Path:
    """Final policy against SFT on the same prompts (the `vs_sft` block of metrics/evaluate.json).

    Three panels: the four IFEval accuracies of both; final − SFT in percentage points with the paired-bootstrap
    95% interval (p-values: exact McNemar for the prompt level, bootstrap for all); instruction-level strict
    final − SFT per instruction id. Without a block (`vs_sft` None) the figure says why (`note`), so the DVC
    output always exists.
    """
    plt = pyplot()
    if not vs_sft:
        fig, ax = plt.subplots(figsize=(7, 2.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No paired final-vs-SFT comparison:\n{note or 'not run'}", ha="center", va="center",
                fontsize=11, wrap=True)
        return save_figure(fig, out_path)
    by_id = vs_sft.get("by_instruction") or {}
    ids = sorted(by_id, key=lambda k: (by_id[k]["delta_inst_level_strict_acc"], k))
    height = max(4.8, 0.3 * len(ids) + 1.8)
    fig, axes = plt.subplots(1, 3, figsize=(18, height), gridspec_kw={"width_ratios": [1.0, 1.25, 1.25]})
    names = [label for _, label in PAIRED_METRICS]
    x = list(range(len(PAIRED_METRICS)))
    ax = axes[0]
    for offset, who, color, hatch in ((-0.2, "sft", "tab:gray", ""), (0.2, "final", "tab:blue", "//")):
        vals = [vs_sft[m][who] for m, _ in PAIRED_METRICS]
        bars = ax.bar([i + offset for i in x], vals, width=0.4, color=color, hatch=hatch, edgecolor="black",
                      label="SFT policy" if who == "sft" else "final policy")
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.08), ylabel="accuracy",
           title=f"IFEval accuracy on the same {vs_sft['n_prompts']} prompts")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    for i, (m, _) in enumerate(PAIRED_METRICS):
        c = vs_sft[m]
        d, lo, hi = 100 * c["delta"], 100 * c["ci95_low"], 100 * c["ci95_high"]
        ax.errorbar([i], [d], yerr=[[d - lo], [hi - d]], fmt="o", color="tab:blue", capsize=6, markersize=7)
        label = f"{d:+.1f}\n[{lo:+.1f}, {hi:+.1f}]\np_boot={_p(c['p_bootstrap'])}"
        if "p_mcnemar" in c:
            label += f"\np_McNemar={_p(c['p_mcnemar'])}"
        ax.annotate(label, (i, hi), textcoords="offset points", xytext=(0, 6), ha="center", va="bottom", fontsize=7)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    lows = [100 * vs_sft[m]["ci95_low"] for m, _ in PAIRED_METRICS]
    highs = [100 * vs_sft[m]["ci95_high"] for m, _ in PAIRED_METRICS]
    span = max(max(highs) - min(lows), 2.0)
    ax.set(xticks=x, xticklabels=names, xlim=(-0.6, len(x) - 0.4), ylim=(min(lows + [0]) - 0.15 * span,
                                                                          max(highs + [0]) + 0.55 * span),
           ylabel="final − SFT (percentage points)",
           title=f"Paired difference, 95% bootstrap CI ({vs_sft.get('resamples', '?')} resamples)")
    ax = axes[2]
    if ids:
        deltas = [100 * by_id[k]["delta_inst_level_strict_acc"] for k in ids]
        colors = ["tab:green" if v > 0 else "tab:red" if v < 0 else "tab:gray" for v in deltas]
        ax.barh(range(len(ids)), deltas, color=colors, edgecolor="black", linewidth=0.5)
        ax.set_yticks(range(len(ids)), [f"{k} (n={by_id[k]['count']})" for k in ids], fontsize=7)
        ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
        reach = 1.1 * max([abs(v) for v in deltas] + [5.0])
        ax.set_xlim(-reach, reach)
    ax.set(xlabel="final − SFT, instruction-level strict (percentage points)", title="Per instruction id")
    for a in axes:
        a.grid(alpha=0.3, axis="y" if a is not axes[2] else "x")
    ps = vs_sft["prompt_level_strict_acc"]
    fig.suptitle(f"Final policy vs SFT policy, paired on {vs_sft['n_prompts']} prompts: prompt-level strict "
                 f"{ps['final']:.3f} vs {ps['sft']:.3f}, {100 * ps['delta']:+.1f} points "
                 f"[{100 * ps['ci95_low']:+.1f}, {100 * ps['ci95_high']:+.1f}], McNemar p = {_p(ps.get('p_mcnemar'))}")
    fig.tight_layout()
    return save_figure(fig, out_path)


def make_report_plots(ws, evaluate_metrics: Mapping | None = None) -> list[Path]:
    """Every figure whose input CSV exists in ws.plots, written to ws.reports; with generation-mode evaluate
    metrics (the metrics/evaluate.json dict) also reports/paired_vs_sft.png."""
    written = []
    adv = ws.plots / "adversarial.csv"
    if adv.exists():
        written.append(plot_adversarial(adv, ws.reports / "adversarial_dynamics.png"))
    losses = {name: ws.plots / f"{stem}.csv" for name, stem in (("SFT", "sft_loss"), ("Reward model", "rm_loss"))
              if (ws.plots / f"{stem}.csv").exists()}
    if losses:
        written.append(plot_losses(losses, ws.reports / "loss_curves.png"))
    if evaluate_metrics is not None and evaluate_metrics.get("mode") == "generate":
        note = (evaluate_metrics.get("skipped") or {}).get("vs_sft") or "evaluate.compare_sft is false"
        written.append(plot_paired(evaluate_metrics.get("vs_sft"), ws.reports / PAIRED_FIGURE, note))
    return written


if __name__ == "__main__":  # python -m gapo.eval.plots [WORKDIR]
    import json
    import sys

    from gapo.paths import Workspace

    _ws = Workspace(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
    _ev = _ws.metrics_file("evaluate")
    for p in make_report_plots(_ws, json.loads(_ev.read_text(encoding="utf-8")) if _ev.is_file() else None):
        print(p)
