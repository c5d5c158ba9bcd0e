"""Encoder RM: AUC, data loading, warm-up to >= 75% validation accuracy on tiny data, continued training, scoring."""
from __future__ import annotations

import itertools
import json
import random
import sys

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.train import reward as R


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_within_group_auc_counts_only_pairs_inside_a_group():
    # prompt a: pass 3.0 vs fail 1.0 (right), pass 3.0 vs fail 3.0 (tie); prompt b: pass 0.0 vs fail 2.0 (wrong);
    # prompt c: all fail (no pair). Cross-prompt pairs (b's pass 0.0 vs a's fails) must not count.
    scores = [3.0, 1.0, 3.0, 0.0, 2.0, 9.0]
    labels = [1, 0, 0, 1, 0, 0]
    groups = ["a", "a", "a", "b", "b", "c"]
    assert R.within_group_auc(scores, labels, groups) == pytest.approx((1 + 0.5 + 0) / 3)
    assert R.roc_auc(scores, labels) == pytest.approx(2.5 / 8)  # the pooled view differs
    nan = R.within_group_auc([1.0, 2.0], [1, 0], ["a", "b"])
    assert nan != nan  # no same-prompt pair with both outcomes


def test_roc_auc_matches_pair_counting_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.5 for _ in range(n)]
        if all(labels) or not any(labels):
            labels[0] = not labels[0]
        assert R.roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))
    assert R.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0 and R.roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert R.roc_auc([1, 2], [1, 1]) != R.roc_auc([1, 2], [1, 1])  # NaN: one class only


@pytest.fixture(scope="module")
def fixture_ws(tmp_path_factory):
    """The fixture data (tests/models/tiny_assets.py): constraint perturbations a 0.5 M-parameter encoder trained
    from scratch can learn in seconds. The prepare stage's tiny split has 16 validation rows and harder
    perturbations, on which bert-tiny stays near chance."""
    from gapo.models.materialize import run_models
    from gapo.paths import Workspace

    ws = Workspace(tmp_path_factory.mktemp("fx"))
    ta.write_fixture_data(ws)
    params = ta.tiny_params()
    run_models(params, ws)
    return ws, params


def test_load_rm_rows_validates_and_keeps_pairs(tmp_path, fixture_ws):
    from gapo.errors import DataError
    from gapo.io import write_jsonl

    ws, _ = fixture_ws
    rows = R.load_rm_rows(ws.jsonl("rm", "train"), limit=101, seed=1)
    keys = [r["key"] for r in rows]
    assert 101 <= len(rows) <= 102 and all(keys.count(k) == 2 for k in keys)
    assert {r["label"] for r in rows} == {0, 1}
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r", "label": 2}])
    with pytest.raises(DataError, match=r"bad.jsonl line 1: field 'label'"):
        R.load_rm_rows(tmp_path / "bad.jsonl")


def test_warmup_reaches_75_percent_and_writes_outputs(fixture_ws):
    ws, params = fixture_ws
    out = R.run_rm_warmup(params, ws)
    m = json.loads(ws.metrics_file("rm_warmup").read_text())
    assert m["val_accuracy"] >= 0.75 and m["val_auc"] >= 0.8, m
    assert m["train_loss_final"] < m["train_loss_first"]
    assert m["val_mean_prob_pos"] > m["val_mean_prob_neg"]
    lines = (ws.plots / "rm_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr" and len(lines) == m["steps"] + 1
    from gapo.models.loading import load_reward_model

    rm, tok = load_reward_model(ws.rm_warmup, params.models)
    rows = R.load_rm_rows(ws.jsonl("rm", "validation"), params.reward.eval_examples, seed=params.seed)
    again = R.evaluate_reward_model(rm, tok, rows, params)
    assert again["accuracy"] == pytest.approx(m["val_accuracy"]) and again["auc"] == pytest.approx(m["val_auc"])
    assert out["checkpoint"] == str(ws.rm_warmup)


def test_continued_training_and_scores(fixture_ws):
    """Per-round retraining: the same engine continues (optimizer state and step counter carry over)."""
    from gapo.models.loading import load_reward_model

    ws, params = fixture_ws
    rm, tok = load_reward_model(ws.reward_base, params.models)
    rows = R.load_rm_rows(ws.jsonl("rm", "train"), 64, seed=0)
    engine, c1 = R.train_reward_model(rm, tok, rows, params, epochs=1.0)
    steps_1 = engine.global_steps
    state = {k: v.clone() for k, v in engine.module.state_dict().items()}
    engine, c2 = R.train_reward_model(engine, tok, rows, params, epochs=1.0, step_offset=len(c1))
    assert engine.global_steps == 2 * steps_1 and c2[0][0] == len(c1) + 1
    assert any(not torch.equal(state[k], v) for k, v in engine.module.state_dict().items())
    engine.train()
    prompts, responses = [r["prompt"] for r in rows[:6]], [r["response"] for r in rows[:6]]
    probs = R.rm_score(engine, tok, prompts, responses, ta.tiny_params("reward.score=prob"))
    logits = R.rm_score(engine, tok, prompts, responses, ta.tiny_params("reward.score=logit"))
    torch.testing.assert_close(probs, logits.sigmoid())
    assert engine.module.training  # scoring restores the training mode it found
    # Order-independent: scores do not depend on how rows are batched (length-sorted inside). Under the bf16
    # autocast (models.reward_autocast) a different batch means different padding and kernels: equal to bf16
    # precision, not to fp32's.
    rev = R.rm_logits(engine, tok, prompts[::-1], responses[::-1], params.reward.max_length, batch_size=4)
    bf16 = params.models.reward_autocast != "none"
    torch.testing.assert_close(rev.flip(0), logits, atol=2e-3 if bf16 else 1e-5, rtol=1e-2 if bf16 else 1e-5)


@pytest.mark.slow
def test_two_process_rm_warmup_under_deepspeed_launcher_zero3(fixture_ws, tmp_path):
    """`gapo rm_warmup` relaunched by the `deepspeed` launcher (it passes --local_rank) as 2 ranks with ZeRO-3:
    partitioned weights, synced scoring batches and a consolidated save."""
    import os
    import shutil
    import subprocess

    from gapo.train.engine import _free_port

    ws, params = fixture_ws
    root = tmp_path / "ws"
    shutil.copytree(ws.data, root / "data")
    shutil.copytree(ws.models, root / "models")
    cmd = [sys.executable, "-m", "gapo.cli", "--profile", "tiny", "--workdir", str(root), "rm_warmup",
           "-S", "deepspeed.launcher=deepspeed", "-S", "deepspeed.num_processes=2", "-S", "deepspeed.zero_stage=3",
           "-S", f"deepspeed.master_port={_free_port()}", "-S", "reward.warmup_examples=64",
           "-S", "reward.warmup_epochs=1", "-S", "reward.eval_examples=21", "-S", "runtime.threads=1"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GAPO_SINGLE_PROCESS_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = json.loads((root / "metrics" / "rm_warmup.json").read_text())
    assert m["world_size"] == 2 and m["val_examples"] >= 21
    from gapo.models.loading import load_reward_model

    rm, tok = load_reward_model(root / "checkpoints" / "rm_warmup", params.models)
    rows = R.load_rm_rows(root / "data" / "rm" / "validation.jsonl", 21, seed=ta.tiny_params().seed)
    # The consolidated ZeRO-3 save holds the trained weights: re-scoring reproduces the 2-rank evaluation.
    assert R.evaluate_reward_model(rm, tok, rows, params)["accuracy"] == pytest.approx(m["val_accuracy"])


def _pp_rows(key, chosen_ids, chosen_kw, rejected_ids, rejected_kw):
    return [{"key": key, "label": 1, "prompt": "p", "response": "r", "instruction_id_list": chosen_ids,
             "kwargs": chosen_kw},
            {"key": key, "label": 0, "prompt": "q", "response": "r", "instruction_id_list": rejected_ids,
             "kwargs": rejected_kw}]


def test_pair_breakdown_by_perturbation_and_constraint():
    rows = (_pp_rows(1, ["a", "b"], [{}, {"n": 3}], ["a", "c", "b"], [{}, {"k": ["x"]}, {"n": 3}])  # insert c
            + _pp_rows(2, ["a", "b"], [{}, {"n": 3}], ["a", "b"], [{}, {"n": 6}])  # modify b (kwargs)
            + _pp_rows(3, ["d"], [{}], ["e"], [{}])  # modify d (sibling swap)
            + [{"key": 4, "label": 1, "prompt": "p", "response": "r"}])  # no twin: skipped
    scores = [2.0, -1.0,   # insert: both rows right, pair right
              0.5, 1.0,    # modify b: chosen right, rejected wrong, pair wrong
              -0.2, -0.2,  # modify d: chosen wrong, rejected right, tie
              3.0]
    out = R.pair_breakdown(rows, scores)
    assert out["skipped_keys"] == 1 and out["overall"]["pairs"] == 3
    assert out["by_perturbation"]["insert"] == {"pairs": 1, "row_accuracy": 1.0, "pair_accuracy": 1.0}
    assert out["by_perturbation"]["modify"] == {"pairs": 2, "row_accuracy": 0.5, "pair_accuracy": 0.25}
    assert set(out["by_instruction"]) == {"b", "c", "d"}
    assert out["by_perturbation_instruction"]["modify:d"]["pair_accuracy"] == 0.5
    # the overall row accuracy is the usual accuracy at logit 0 over the paired rows
    assert out["overall"]["row_accuracy"] == pytest.approx(sum((s > 0) == (r["label"] == 1)
                                                               for r, s in zip(rows[:6], scores[:6])) / 6)
    with pytest.raises(ValueError):
        R.pair_breakdown(rows, scores[:-1])


def test_prompt_facts_drop_and_freeze_travel_with_the_checkpoint(fixture_ws, tmp_path):
    """`reward.prompt_facts: drop` is stored in the RM's config, so a scorer that only has the checkpoint encodes
    without the facts; `reward.freeze_layers` trains only the layers above N."""
    from gapo.config import ConfigError
    from gapo.models.loading import load_reward_model
    from gapo.models.reward_model import freeze_bottom_layers, keeps_facts
    from gapo.train.engine import save_hf

    ws, params = fixture_ws
    p = ta.tiny_params("reward.prompt_facts=drop", "reward.freeze_layers=1")
    rm, tok = load_reward_model(ws.reward_base, p.models)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    rows = R.load_rm_rows(ws.jsonl("rm", "train"), 32, seed=0)
    engine, _ = R.train_reward_model(rm, tok, rows, p, epochs=1.0)
    after = engine.module.state_dict()
    layer0 = [k for k in after if ".layer.0." in k or "embeddings" in k]
    upper = [k for k in after if ".layer.1." in k]
    assert layer0 and upper
    assert all(torch.equal(before[k], after[k]) for k in layer0)
    assert any(not torch.equal(before[k], after[k]) for k in upper)
    assert not keeps_facts(engine)
    save_hf(engine, tok, tmp_path / "rm")
    loaded, tok2 = load_reward_model(tmp_path / "rm", p.models)
    assert not keeps_facts(loaded)
    prompts = [r["prompt"] for r in rows[:4]]
    responses = [r["response"] for r in rows[:4]]
    from gapo.models.rm_inputs import split_requirements

    reqs = [split_requirements(x)[1] for x in prompts]
    torch.testing.assert_close(R.rm_logits(loaded, tok2, prompts, responses, p.reward.max_length),
                               R.rm_logits(loaded, tok2, reqs, responses, p.reward.max_length, facts=True))
    fresh, _ = load_reward_model(ws.reward_base, params.models)
    assert keeps_facts(fresh)  # absent = keep (every checkpoint made before the knob)
    with pytest.raises(ConfigError, match="freeze_layers"):
        freeze_bottom_layers(fresh, 99)


def test_mix_by_key_takes_the_pr_share_as_whole_pairs_with_their_own_keys():
    pp = [{"key": k, "prompt": f"p{k}{s}", "response": "r", "label": y} for k in range(10) for s, y in (("a", 1), ("b", 0))]
    pr = [{"key": k, "prompt": "p", "response": f"r{k}{s}", "label": y} for k in range(10) for s, y in (("a", 1), ("b", 0))]
    rows = R.mix_by_key(pp, pr, 8, 0.5, seed=3)
    from_pr = [r for r in rows if str(r["key"]).startswith("pr:")]
    assert len(rows) == 8 and len(from_pr) == 4
    # whole pairs on both sides: every key appears exactly twice, once per label
    for part in (from_pr, [r for r in rows if r not in from_pr]):
        keys = [r["key"] for r in part]
        assert all(keys.count(k) == 2 for k in keys)
        assert sorted(r["label"] for r in part) == [0, 0, 1, 1]
    assert R.mix_by_key(pp, pr, 8, 0.5, seed=3) == rows  # seeded
    assert not any(str(r["key"]).startswith("pr:") for r in R.mix_by_key(pp, pr, 8, 0.0, seed=3))
    assert len(R.mix_by_key(pp, pr, 0, 0.5, seed=3)) == 20  # 0 = as many rows as the PP set holds
    assert all(str(r["key"]).startswith("pr:") for r in R.mix_by_key(pp, pr, 6, 1.0, seed=3))


def test_warmup_rows_reads_data_pr_only_when_asked(tmp_path):
    from gapo.config import load_params
    from gapo.io import write_jsonl
    from gapo.paths import Workspace

    ws = Workspace(tmp_path)
    write_jsonl(ws.jsonl("rm", "train"), [{"key": k, "prompt": "p", "response": "r", "label": y}
                                          for k in range(4) for y in (1, 0)])
    write_jsonl(ws.jsonl("pr", "train"), [{"key": k, "prompt": "p", "chosen": "good", "rejected": "bad"}
                                          for k in range(4)])
    pp_only = R.warmup_rows(load_params(None, ["reward.warmup_examples=4", "reward.pr_fraction=0"]), ws)
    assert len(pp_only) == 4 and not any(str(r["key"]).startswith("pr:") for r in pp_only)
    mixed = R.warmup_rows(load_params(None, ["reward.warmup_examples=4", "reward.pr_fraction=0.5"]), ws)
    pr = [r for r in mixed if str(r["key"]).startswith("pr:")]
    assert len(mixed) == 4 and sorted((r["response"], r["label"]) for r in pr) == [("bad", 0), ("good", 1)]
