"""The seeded kill schedule (kill_schedule.py, issue 13): random kill -9 points over a tiny `dvc repro` and a Prefect
flow run. The slow test runs a seeded sample of 10 points end to end (CI); the fast ones check the schedule itself
and that an interrupted schedule resumes where it stopped (the 100-point run takes hours)."""
from __future__ import annotations

import json
import os

from tests.reliability import kill_schedule as KS
import pytest

SEED = int(os.environ.get("GAPO_KILL_SCHEDULE_SEED", "20261206"))


def test_schedule_is_seeded_and_covers_the_whole_run():
    points = KS.schedule(SEED, 100)
    assert points == KS.schedule(SEED, 100) and points != KS.schedule(SEED + 1, 100)
    for mode in KS.MODES:
        fractions = sorted(p.fraction for p in points if p.mode == mode)
        assert len(fractions) == 50
        # one point in each 1/50 of [0, MAX_FRACTION): no stretch of the run is left without a kill
        slots = [int(f / KS.MAX_FRACTION * 50) for f in fractions]
        assert slots == list(range(50)), slots
    assert [p.mode for p in points[:4]] == ["dvc", "flow", "dvc", "flow"]


def test_an_interrupted_schedule_resumes_after_its_last_finished_point(tmp_path, monkeypatch):
    """The script is killed (here: an exception) during point 3; the next invocation runs 3..5 only and the
    progress file holds each point once."""
    ran = []

    def fake_point(point, state, template, reference):
        if point.index == 3 and not ran.count(3):
            ran.append(3)
            raise KeyboardInterrupt  # the session ends mid-point
        ran.append(point.index)
        return {**KS.asdict(point), "ok": True, "killed": True, "landed": "gapo sft", "rerun_s": 1.0}

    monkeypatch.setattr(KS, "make_template", lambda state: state / "template")
    monkeypatch.setattr(KS, "make_reference", lambda state, template: {})
    monkeypatch.setattr(KS, "run_point", fake_point)
    with pytest.raises(KeyboardInterrupt):
        KS.run_schedule(SEED, 6, tmp_path, out=open(os.devnull, "w"))
    assert sorted(KS.read_progress(tmp_path / "progress.jsonl")) == [0, 1, 2]
    records = KS.run_schedule(SEED, 6, tmp_path, out=open(os.devnull, "w"))
    assert ran == [0, 1, 2, 3, 3, 4, 5]
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(6))
    assert [r["index"] for r in records] == list(range(6))
    with pytest.raises(SystemExit, match="holds the schedule"):  # another seed or size needs another state folder
        KS.run_schedule(SEED, 7, tmp_path)


@pytest.mark.slow
def test_a_seeded_sample_of_ten_kill_points(tmp_path):
    """5 kills in `dvc repro`, 5 in the flow, at seeded random times: each rerun exits 0, keeps every round completed
    before the kill, ends with the final weights of an uninterrupted run of the same mode, a clean `dvc status`, no
    temp file and no orphan logged model."""
    records = KS.run_schedule(SEED, 10, tmp_path / "state")
    summary = KS.summarize(records, 10)
    print("kill schedule sample:", json.dumps(summary))
    assert summary["points_run"] == 10 and summary["killed"] == 10, summary
    assert summary["by_mode"] == {"dvc": 5, "flow": 5}
    failed = [r for r in records if not r["ok"]]
    assert not failed, json.dumps(failed, indent=1)[:8000]
    assert json.loads((tmp_path / "state" / "reference.json").read_text())["modes_agree"]
