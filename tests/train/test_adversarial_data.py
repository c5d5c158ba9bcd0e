"""The round's data: fresh prompt slices and the RM set, whose generator samples must actually be in it (the
released code's mix_cls_dataset drops them all with pair data and ratio 0.5, arXiv 2503.20194)."""
from __future__ import annotations

import pytest

from gapo.train.adversarial import build_rm_round_set
from gapo.train.round_metrics import write_outputs
from gapo.train.round_state import prompt_slice


def pref_rows(n_pairs: int) -> list[dict]:
    rows = []
    for i in range(n_pairs):
        rows.append({"key": i, "prompt": f"prompt {i}\nRequirements:\n- a", "response": f"ref {i}", "label": 1})
        rows.append({"key": i, "prompt": f"prompt {i}\nRequirements:\n- b", "response": f"ref {i}", "label": 0})
    return rows


def fakes_for(keys) -> list[dict]:
    return [{"key": k, "prompt": f"prompt {k}\nRequirements:\n- a", "response": f"generated {k}", "label": 0}
            for k in keys]


def test_all_fakes_are_added_at_the_requested_ratio():
    pref = pref_rows(50)
    fakes = fakes_for(range(10))
    out = build_rm_round_set(pref, fakes, fake_ratio=0.5, n_pairs_if_no_fakes=99, seed=0)
    gen = [r for r in out if r["source"] == "generator"]
    # every sample is in the set, labelled 0 (the paper's y_gen = 0)
    assert sorted(r["response"] for r in gen) == sorted(f["response"] for f in fakes)
    assert all(r["label"] == 0 for r in gen)
    neg = [r for r in out if r["label"] == 0]
    pos = [r for r in out if r["label"] == 1]
    # 10 fakes at r = 0.5: 10 preference negatives, so fakes are half the negatives; labels balanced
    assert len(gen) / len(neg) == pytest.approx(0.5)
    assert len(pos) == len(neg) == 20


def test_fake_ratio_controls_the_share_of_generated_negatives():
    pref = pref_rows(200)
    fakes = fakes_for(range(30))
    out = build_rm_round_set(pref, fakes, fake_ratio=0.75, n_pairs_if_no_fakes=0, seed=1)
    neg = [r for r in out if r["label"] == 0]
    gen = [r for r in neg if r["source"] == "generator"]
    # 30 fakes at r = 0.75 -> round(30·0.25/0.75) = 10 preference pairs; 30 / (30 + 10) = 0.75
    assert len(gen) == 30 and len(neg) == 40
    assert sum(r["label"] for r in out) == 40


def test_each_fake_comes_with_the_reference_answer_for_its_prompt():
    pref = pref_rows(20)
    out = build_rm_round_set(pref, fakes_for([3, 7]), fake_ratio=0.5, n_pairs_if_no_fakes=0, seed=0)
    for k in (3, 7):
        same = [r for r in out if r["prompt"] == f"prompt {k}\nRequirements:\n- a"]
        assert {(r["source"], r["label"]) for r in same} >= {("reference", 1), ("generator", 0)}
        assert {r["key"] for r in same} == {k}  # same key: the RM batches keep them together


def test_verifier_labels_flip_only_the_passing_samples():
    pref = pref_rows(50)
    fakes = fakes_for(range(6))
    for i, f in enumerate(fakes):
        f["passed"] = i % 3 == 0  # samples 0 and 3 satisfy their constraints
    gan = build_rm_round_set(pref, fakes, fake_ratio=0.5, n_pairs_if_no_fakes=0, seed=0)
    ver = build_rm_round_set(pref, fakes, fake_ratio=0.5, n_pairs_if_no_fakes=0, seed=0, fake_labels="verifier")
    assert [r["response"] for r in gan] == [r["response"] for r in ver]  # the same rows, in the same order
    labels = {r["response"]: r["label"] for r in ver if r["source"] == "generator"}
    assert labels == {f"generated {i}": int(i % 3 == 0) for i in range(6)}
    assert all(r["label"] == 0 for r in gan if r["source"] == "generator")


def test_no_fakes_means_preference_pairs_only():
    out = build_rm_round_set(pref_rows(20), [], fake_ratio=0.0, n_pairs_if_no_fakes=6, seed=0)
    assert len(out) == 12 and {r["source"] for r in out} == {"preference"}
    assert sum(r["label"] for r in out) == 6


def test_prompt_slices_are_fresh_each_round_and_deterministic():
    rows = [{"prompt": str(i)} for i in range(100)]
    r1 = prompt_slice(rows, 1, 30, seed=5, stream="fakes")
    r2 = prompt_slice(rows, 2, 30, seed=5, stream="fakes")
    assert len(r1) == len(r2) == 30
    assert not {r["prompt"] for r in r1} & {r["prompt"] for r in r2}
    assert r1 == prompt_slice(rows, 1, 30, seed=5, stream="fakes")
    assert r1 != prompt_slice(rows, 1, 30, seed=5, stream="ppo")


def test_outputs_csv_and_metrics(workspace):
    import csv
    import json

    base = {"round": 0, "verifier_pass_rate": 0.25, "rm_auc": 0.9, "hack_gap": 0.1, "example": {"x": "y"}}
    rounds = [{"round": 1, "verifier_pass_rate": 0.3, "rm_auc": 0.8, "hack_gap": 0.05, "ppo": [{"a": 1}]},
              {"round": 2, "verifier_pass_rate": 0.4, "rm_auc": float("nan"), "hack_gap": 0.0}]
    write_outputs(workspace, base, rounds, total_rounds=3)
    m = json.loads(workspace.metrics_file("adversarial").read_text())
    assert m["rounds_completed"] == 2 and m["rounds"] == 3
    assert m["verifier_pass_rate"] == 0.4 and m["pass_rate_sft"] == 0.25
    assert m["pass_rate_delta"] == pytest.approx(0.15)
    assert m["rm_auc"] is None  # NaN is not valid JSON
    assert [r["round"] for r in m["per_round"]] == [0, 1, 2]
    with open(workspace.plots / "adversarial.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert rows[2]["rm_auc"] == "" and rows[1]["verifier_pass_rate"] == "0.3"
