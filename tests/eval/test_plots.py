"""gapo.eval.plots: PNGs from small curve CSVs, byte-stable, with one-line errors on malformed CSVs."""
from __future__ import annotations

import math

import pytest

from gapo.errors import DataError
from gapo.eval import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ADV = ("round,rm_acc_fakes,rm_auc,fool_rate,mean_reward,kl,entropy,verifier_pass_rate,hack_gap\n"
       "1,0.90,0.93,0.10,0.25,0.01,2.4,0.35,0.09\n"
       "2,0.80,0.85,0.20,0.40,0.04,2.3,0.45,\n"   # empty hack_gap: no verifier that round
       "3,0.70,0.77,0.30,0.55,0.09,2.2,0.55,0.05\n")


def _csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # IHDR: width and height, big-endian, at bytes 16..24
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_read_curve_csv_parses_empty_cells_as_nan(tmp_path):
    cols = plots.read_curve_csv(_csv(tmp_path / "a.csv", ADV), plots.ADVERSARIAL_COLUMNS)
    assert cols["round"] == [1.0, 2.0, 3.0]
    assert cols["hack_gap"][0] == 0.09 and math.isnan(cols["hack_gap"][1])


def test_adversarial_png_is_written_and_byte_stable(tmp_path):
    csv_path = _csv(tmp_path / "plots" / "adversarial.csv", ADV)
    a = plots.plot_adversarial(csv_path, tmp_path / "r1" / "adv.png")
    b = plots.plot_adversarial(csv_path, tmp_path / "r2" / "adv.png")
    w, h = _png_size(a)
    assert w > 600 and h > 400 and a.stat().st_size > 10_000
    assert a.read_bytes() == b.read_bytes()
    # a different curve gives a different picture
    c = plots.plot_adversarial(_csv(tmp_path / "other.csv", ADV.replace("0.90,0.93", "0.10,0.20")), tmp_path / "c.png")
    assert c.read_bytes() != a.read_bytes()


def test_make_report_plots_writes_what_exists(workspace):
    ws = workspace
    assert plots.make_report_plots(ws) == []
    # the columns gapo.train.sft writes: extra columns (lr) are allowed
    _csv(ws.plots / "sft_loss.csv", "step,loss,lr\n" + "".join(f"{s},{5.0 / s},0.001\n" for s in range(1, 60)))
    out = plots.make_report_plots(ws)
    assert out == [ws.reports / "loss_curves.png"] and _png_size(out[0])[0] > 300
    single = _png_size(out[0])
    _csv(ws.plots / "rm_loss.csv", "step,loss\n1,0.7\n2,0.6\n3,0.5\n")
    _csv(ws.plots / "adversarial.csv", ADV)
    out = plots.make_report_plots(ws)
    assert out == [ws.reports / "adversarial_dynamics.png", ws.reports / "loss_curves.png"]
    assert _png_size(out[1])[0] > single[0]  # two panels side by side now


@pytest.mark.parametrize("text, needle", [
    ("step,los\n1,2\n", "line 1: missing column(s) loss"),
    ("step,loss\n1,2\n2,abc\n", "line 3: column 'loss' = 'abc' is not a number"),
    ("step,loss\n1,2,3\n", "line 2: more cells than header columns"),
    ("step,loss\n", "no data rows"),
    ("", "line 1: missing column(s) step, loss (header: empty)"),
])
def test_bad_csv_one_line_error(tmp_path, text, needle):
    path = _csv(tmp_path / "sft_loss.csv", text)
    with pytest.raises(DataError) as exc:
        plots.plot_losses({"SFT": path}, tmp_path / "out.png")
    assert needle in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out.png").exists()


def _vs_sft():
    from gapo.eval.paired import compare

    def v(key, ids, strict):
        return {"key": key, "instruction_id_list": ids, "prompt_level_strict_acc": all(strict),
                "prompt_level_loose_acc": all(strict), "inst_level_strict_acc": strict, "inst_level_loose_acc": strict}

    ids = ["punctuation:no_comma", "keywords:existence"]
    final = [v(k, ids, [k % 2 == 0, k % 3 == 0]) for k in range(30)]
    sft = [v(k, ids, [k % 4 == 0, k % 3 == 0]) for k in range(30)]
    return compare(final, sft, [20] * 30, [18] * 30, resamples=500, seed=0)


def test_paired_png_is_written_and_byte_stable(workspace):
    ws = workspace
    vs = _vs_sft()
    a = plots.plot_paired(vs, ws.reports / "a.png")
    b = plots.plot_paired(vs, ws.reports / "b.png")
    assert a.read_bytes() == b.read_bytes() and _png_size(a)[0] > 1000
    changed = {**vs, "prompt_level_strict_acc": {**vs["prompt_level_strict_acc"], "final": 0.9}}
    assert plots.plot_paired(changed, ws.reports / "c.png").read_bytes() != a.read_bytes()
    # generation-mode metrics: the figure from vs_sft, or one naming why there is none
    assert plots.make_report_plots(ws, {"mode": "generate", "vs_sft": vs}) == [ws.reports / "paired_vs_sft.png"]
    assert (ws.reports / "paired_vs_sft.png").read_bytes() == a.read_bytes()
    out = plots.make_report_plots(ws, {"mode": "generate", "skipped": {"vs_sft": "no SFT checkpoint at x"}})
    assert out == [ws.reports / "paired_vs_sft.png"] and out[0].read_bytes() != a.read_bytes()
    assert plots.make_report_plots(ws, {"mode": "score_only"}) == []
