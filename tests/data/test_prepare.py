"""The prepare stage: determinism, atomic output, metrics, and the default size within budget."""
from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path

import pytest
from tests.data.data_helpers import records, small_params

from gapo.data.prepare import run_prepare
from gapo.io import read_json
from gapo.paths import SPLITS, Workspace


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_stats(prepared):
    ws, summary = prepared
    for kind in ("sft", "pp", "rm", "pr", "ifeval"):
        for split in SPLITS:
            assert ws.jsonl(kind, split).is_file()
        assert (ws.hf_dataset(kind) / "dataset_dict.json").is_file()
    stats = read_json(ws.data_stats)
    assert stats["counts"] == summary["counts"]
    assert stats["counts"]["rm"]["train"] == 2 * stats["counts"]["pp"]["train"]
    assert set(stats["drops"]) >= {"reference_failed_check", "prompts_without_reference", "pr_no_breaking_rewrite"}
    assert set(stats["perturbations"]["train"]) == {"modify", "insert"}
    metrics = read_json(ws.metrics_file("prepare"))
    assert metrics["sft_train"] == stats["counts"]["sft"]["train"] and metrics["seconds"] > 0


def test_hf_datasets_hold_the_jsonl_records(prepared):
    import datasets

    ws, _ = prepared
    for kind in ("pp", "ifeval"):
        dd = datasets.load_from_disk(str(ws.hf_dataset(kind)))
        assert set(dd) == set(SPLITS)
        rows = records(ws, kind, "train")
        assert len(dd["train"]) == len(rows)
        first = dd["train"][0]
        for field, value in rows[0].items():
            if "kwargs" in field:   # one struct of every IFEval argument, None where unused (google/IFEval layout)
                assert [{k: v for k, v in kw.items() if v is not None} for kw in first[field]] == value
            else:
                assert first[field] == value


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    a, b, c = Workspace(tmp_path / "a"), Workspace(tmp_path / "b"), Workspace(tmp_path / "c")
    run_prepare(small_params("data.workers=1"), a)
    run_prepare(small_params("data.workers=2"), b)
    run_prepare(small_params("seed=99"), c)
    da, db, dc = _digest(a.data), _digest(b.data), _digest(c.data)
    assert any(k.endswith(".arrow") for k in da) and any(k.endswith("state.json") for k in da)
    assert da == db
    assert da["sft/train.jsonl"] != dc["sft/train.jsonl"]


def test_bytes_do_not_depend_on_the_process(tmp_path):
    """Two fresh interpreters with different hash seeds (set/dict order of str) write the same bytes."""
    import os
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from gapo.config import load_params; "
            "from gapo.paths import Workspace; from gapo.data.prepare import run_prepare; "
            "run_prepare(load_params(None, ['data.num_products=30', 'data.test_prompts=10', 'data.workers=1']), "
            "Workspace(Path(sys.argv[1])))")
    repo = Path(__file__).resolve().parents[2]
    for name, hash_seed in (("p1", "1"), ("p2", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    assert _digest(tmp_path / "p1" / "data") == _digest(tmp_path / "p2" / "data")


def test_rerun_replaces_data_and_keeps_foreign_files(tmp_path):
    ws = Workspace(tmp_path)
    ws.data.mkdir()
    (ws.data / ".gitignore").write_text("/sft\n")   # DVC writes this next to its outputs
    (ws.data / "sft").mkdir()
    (ws.data / "sft" / "stale.jsonl").write_text("{}\n")
    run_prepare(small_params("data.num_products=20", "data.test_prompts=10"), ws)
    assert (ws.data / ".gitignore").read_text() == "/sft\n"
    assert not (ws.data / "sft" / "stale.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_default_size_meets_the_targets_within_budget(tmp_path):
    """Default params: >= 5,000 SFT / PP / PR training examples and >= 500 test prompts in < 120 CPU-seconds."""
    from gapo.config import load_params

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    params = load_params(None)
    ws = Workspace(tmp_path)
    cpu0, wall0 = cpu(), time.time()
    summary = run_prepare(params, ws)
    cpu_s, wall_s = cpu() - cpu0, time.time() - wall0
    counts = summary["counts"]
    print(f"default prepare: {wall_s:.1f} s wall, {cpu_s:.1f} CPU-s, counts {counts}, drops {summary['drops']}")
    assert counts["sft"]["train"] >= 5000
    assert counts["pp"]["train"] >= 5000
    assert counts["pr"]["train"] >= 5000
    assert counts["ifeval"]["test"] >= 500
    assert cpu_s < 120
