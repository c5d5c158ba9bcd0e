"""The adversarial stage on the tiny profile: rounds, checkpoints, RM weights changing every round, resume after
the last complete round (bit-exact), `--round K`, rounds=0, the PPO baseline, metrics and plots."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.train.test_ppo import make_gapo_workspace

from gapo.config import ConfigError
from gapo.train import adversarial as A


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """A tiny workspace after the full stage (2 rounds)."""
    ws, params = make_gapo_workspace(tmp_path_factory.mktemp("adv"))
    summary = A.run_adversarial(params, ws)
    return ws, params, summary


def test_rounds_checkpoints_and_rm_changing_every_round(played):
    ws, params, summary = played
    assert summary["rounds_run"] == [1, 2] and summary["rounds_completed"] == 2
    rm_hashes = [md5(ws.rm_warmup / "model.safetensors")]
    for k in (1, 2):
        rd = ws.round_dir(k)
        for sub in ("policy", "critic", "reward"):
            assert (rd / sub / "config.json").is_file(), f"{rd / sub} missing"
        info = json.loads((rd / "round.json").read_text())
        assert info["round"] == k and info["fingerprint"] == A.fingerprint(params, ws)
        # (b) every generator sample of the round went into the RM set
        assert info["n_fakes_in_rm_set"] == params.adversarial.prompts_per_round
        assert info["rm_set_size"] == 4 * params.adversarial.prompts_per_round  # r = 0.5, balanced
        rm_hashes.append(md5(rd / "reward" / "model.safetensors"))
    # the discriminator is trained in every round (the released code never trains it after warm-up)
    assert len(set(rm_hashes)) == 3, rm_hashes
    # the generator moved too
    assert md5(ws.round_dir(2) / "policy" / "model.safetensors") != md5(ws.sft / "model.safetensors")
    # optimizer states, kept only for the last complete round (the only one ever resumed), and the RNG
    assert (ws.round_dir(2) / "state" / "actor").is_dir() and (ws.round_dir(2) / "rng.pt").is_file()
    assert not (ws.round_dir(1) / "state").exists()
    # final = last round
    assert md5(ws.final / "policy" / "model.safetensors") == md5(ws.round_dir(2) / "policy" / "model.safetensors")
    assert md5(ws.final / "reward" / "model.safetensors") == md5(ws.round_dir(2) / "reward" / "model.safetensors")


def test_metrics_and_plots(played):
    ws, _, _ = played
    m = json.loads(ws.metrics_file("adversarial").read_text())
    assert m["rounds_completed"] == 2 and [r["round"] for r in m["per_round"]] == [0, 1, 2]
    for key in ("rm_auc", "rm_acc_fakes", "fool_rate", "mean_reward", "kl", "entropy", "verifier_pass_rate",
                "hack_gap", "pass_rate_sft", "pass_rate_last"):
        assert key in m, key
    last = m["per_round"][-1]
    assert m["hack_gap"] == pytest.approx(last["rm_prob_fakes"] - last["verifier_pass_rate"])
    assert m["fool_rate"] == pytest.approx(1 - m["rm_acc_fakes"])
    assert m["per_round"][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # round 0: the SFT policy is the reference
    with open(ws.plots / "adversarial.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    from gapo.eval.plots import ADVERSARIAL_COLUMNS

    assert set(ADVERSARIAL_COLUMNS) <= set(rows[0])


def test_round_by_round_with_a_crash_resumes_bit_exactly(played, tmp_path):
    """`--round 1`, a crash half-way through saving round 2, then `--round 2` (what the Prefect flow runs, one
    process per round) gives the same weights as the uninterrupted stage: optimizer states, RNG, β restored."""
    from gapo.paths import Workspace

    ws, params, _ = played
    other = Workspace(tmp_path / "ws")
    for rel in ("data", "models", "checkpoints/sft", "checkpoints/rm_warmup"):
        shutil.copytree(ws.root / rel, other.root / rel)
    assert A.run_adversarial(params, other, only_round=1)["rounds_run"] == [1]
    assert not other.final.exists()  # round 2 of 2 is not done
    assert A.run_adversarial(params, other, only_round=1)["rounds_run"] == []  # idempotent (Prefect retries)
    # a crash while saving round 2: weights half written, no round.json (which is written last)
    partial = other.round_dir(2) / "policy"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half a file")
    assert A.completed_rounds(other, A.fingerprint(params, other)) == 1
    assert A.run_adversarial(params, other, only_round=2)["rounds_run"] == [2]
    for sub in ("policy", "reward", "critic"):
        a, b = weights(ws.round_dir(2) / sub), weights(other.round_dir(2) / sub)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{sub}/{key} differs after resume"
    assert other.final.is_dir()


def test_only_round_arguments(played):
    ws, params, _ = played
    with pytest.raises(ConfigError, match="expected 1..2"):
        A.run_adversarial(params, ws, only_round=3)
    p3 = params.model_copy(deep=True)
    p3.adversarial.rounds = 5
    with pytest.raises(ConfigError, match="not complete yet"):
        A.run_adversarial(p3, ws, only_round=5)


def test_changed_params_make_completed_rounds_stale(played):
    ws, params, _ = played
    changed = params.model_copy(deep=True)
    changed.ppo.actor_learning_rate = params.ppo.actor_learning_rate * 2
    assert A.completed_rounds(ws, A.fingerprint(changed, ws)) == 0
    more = params.model_copy(deep=True)
    more.adversarial.rounds = 7  # adding rounds keeps the completed ones
    assert A.fingerprint(more, ws) == A.fingerprint(params, ws)
    assert A.completed_rounds(ws, A.fingerprint(more, ws)) == 2


def test_changed_code_makes_completed_rounds_stale(played, tmp_path, monkeypatch):
    """DVC reruns the stage when its code deps change and keeps the persisted rounds: they must not be resumed."""
    from gapo.train import round_state as RS

    ws, params, _ = played
    for rel in RS.CODE_DEPS:
        f = tmp_path / rel if rel.endswith(".py") else tmp_path / rel / "m.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x = 1\n")
    before = RS.code_digest(tmp_path)
    (tmp_path / "gapo/train/baselines.py").write_text("y = 1\n")  # not run by this stage
    assert RS.code_digest(tmp_path) == before
    (tmp_path / "gapo/train/ppo.py").write_text("x = 2\n")
    assert RS.code_digest(tmp_path) != before
    monkeypatch.setattr(RS, "code_digest", lambda root=None: "another version of the code")
    assert RS.completed_rounds(ws, RS.fingerprint(params, ws)) == 0


def test_zero_rounds_final_is_sft_and_warmup_rm(played, tmp_path):
    from gapo.paths import Workspace

    ws, params, _ = played
    other = Workspace(tmp_path / "ws0")
    for rel in ("data", "models", "checkpoints/sft", "checkpoints/rm_warmup"):
        shutil.copytree(ws.root / rel, other.root / rel)
    p0 = params.model_copy(deep=True)
    p0.adversarial.rounds = 0
    out = A.run_adversarial(p0, other)
    assert out["rounds_run"] == [] and out["final"] == str(other.final)
    assert md5(other.final / "policy" / "model.safetensors") == md5(other.sft / "model.safetensors")
    assert md5(other.final / "reward" / "model.safetensors") == md5(other.rm_warmup / "model.safetensors")
    m = json.loads(other.metrics_file("adversarial").read_text())
    assert [r["round"] for r in m["per_round"]] == [0] and "verifier_pass_rate" in m


def test_ppo_baseline_keeps_the_warmup_rm(played, tmp_path):
    """method: ppo = the same rounds without (a)-(c): PPO against the fixed warm-up RM (the paper's baseline)."""
    from gapo.paths import Workspace

    ws, params, _ = played
    other = Workspace(tmp_path / "wsp")
    for rel in ("data", "models", "checkpoints/sft", "checkpoints/rm_warmup"):
        shutil.copytree(ws.root / rel, other.root / rel)
    pp = params.model_copy(deep=True)
    pp.method = "ppo"
    pp.adversarial.rounds = 1
    A.run_adversarial(pp, other)
    warm, after = weights(other.rm_warmup), weights(other.round_dir(1) / "reward")
    assert all(torch.equal(warm[k], after[k]) for k in warm)
    assert "n_fakes_in_rm_set" not in json.loads((other.round_dir(1) / "round.json").read_text())
    assert md5(other.round_dir(1) / "policy" / "model.safetensors") != md5(other.sft / "model.safetensors")
