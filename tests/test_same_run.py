"""scripts/same_run.py: two workspaces compared on metrics (timings left out) and checkpoint weights."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("same_run", ROOT / "scripts" / "same_run.py")
same_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(same_run)


def _workspace(root: Path, acc: float, time_s: float, weights: bytes) -> Path:
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "evaluate.json").write_text(json.dumps(
        {"prompt_level_strict_acc": acc, "time_s": time_s, "rounds": [{"kl": 0.1, "timing/eval_s": time_s}]}))
    (root / "checkpoints" / "final" / "policy").mkdir(parents=True)
    (root / "checkpoints" / "final" / "policy" / "model.safetensors").write_bytes(weights)
    return root


def test_same_runs_differ_only_in_timings(tmp_path, capsys):
    a = _workspace(tmp_path / "a", 0.12, 10.0, b"w")
    b = _workspace(tmp_path / "b", 0.12, 99.0, b"w")
    assert same_run.main([str(a), str(b)]) == 0
    assert "same: 1 metrics files, 1 checkpoints" in capsys.readouterr().out


def test_a_changed_metric_and_changed_weights_are_named(tmp_path, capsys):
    a = _workspace(tmp_path / "a", 0.12, 10.0, b"w")
    b = _workspace(tmp_path / "b", 0.13, 10.0, b"v")
    assert same_run.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "metrics/evaluate.json prompt_level_strict_acc: 0.12 != 0.13" in out
    assert "checkpoints/final/policy/model.safetensors: weights differ" in out and "2 difference(s)" in out


def test_a_file_missing_on_one_side_is_a_difference(tmp_path):
    a = _workspace(tmp_path / "a", 0.12, 10.0, b"w")
    b = _workspace(tmp_path / "b", 0.12, 10.0, b"w")
    (b / "metrics" / "extra.json").write_text("{}")
    assert same_run.metric_differences(a, b) == ["metrics/extra.json: only in the second workspace"]
