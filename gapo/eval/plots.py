"""PNG figures of the curves the training stages write: adversarial dynamics per round and SFT / RM losses.

Inputs are the DVC plot files (plots/adversarial.csv: one row per round with `round, rm_acc_fakes, rm_auc,
fool_rate, mean_reward, kl, entropy, verifier_pass_rate, hack_gap`, optionally `rm_pp_acc` and more, as
gapo.train.adversarial writes it; plots/sft_loss.csv and plots/rm_loss.csv:
`step, loss`). Outputs go to reports/: `adversarial_dynamics.png` (four panels: the discriminator, the
generator, reward against the verifier, drift from the reference) and `loss_curves.png`. Empty cells read
as NaN and are skipped, so a round without a verifier still plots. Matplotlib runs on the Agg backend and
PNGs carry no timestamp, so the same CSV gives the same bytes.

API
    read_curve_csv(path, required) -> dict[column, list[float]]
    plot_adversarial(csv_path, out_path) -> Path
    plot_losses({"SFT": csv, "reward model": csv}, out_path) -> Path
    make_report_plots(ws) -> list[Path]     every figure whose CSV exists
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from gapo.errors import DataError

ADVERSARIAL_COLUMNS = ("round", "rm_acc_fakes", "rm_auc", "fool_rate", "mean_reward", "kl", "entropy",
                       "verifier_pass_rate", "hack_gap")
LOSS_COLUMNS = ("step", "loss")


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_path: str | os.PathLike) -> Path:
    from gapo.io import atomic_file

    out_path = Path(out_path)
    with atomic_file(out_path, "wb") as fh:
        # no Software/date metadata: byte-stable output for DVC
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
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
    plt = _pyplot()
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
    return _save(fig, out_path)


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
    plt = _pyplot()
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
    return _save(fig, out_path)


def make_report_plots(ws) -> list[Path]:
    """Every figure whose input CSV exists in ws.plots, written to ws.reports."""
    written = []
    adv = ws.plots / "adversarial.csv"
    if adv.exists():
        written.append(plot_adversarial(adv, ws.reports / "adversarial_dynamics.png"))
    losses = {name: ws.plots / f"{stem}.csv" for name, stem in (("SFT", "sft_loss"), ("Reward model", "rm_loss"))
              if (ws.plots / f"{stem}.csv").exists()}
    if losses:
        written.append(plot_losses(losses, ws.reports / "loss_curves.png"))
    return written


if __name__ == "__main__":  # python -m gapo.eval.plots [WORKDIR]
    import sys

    from gapo.paths import Workspace

    for p in make_report_plots(Workspace(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())):
        print(p)
