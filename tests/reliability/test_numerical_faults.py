"""Numerical faults: a NaN injected (GAPO_INJECT_NAN, gapo.train.guards) into a loss, the RM reward or the
advantages stops the step with a NumericalError naming the round and step; the last good checkpoint stays as it
was; through Prefect the task is marked failed with that message and is not retried."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.train.test_ppo import build_models, make_gapo_workspace

from gapo.errors import NumericalError
from gapo.train import guards

SMALL = ("adversarial.prompts_per_round=4", "adversarial.eval_prompts=2", "ppo.rollout_batch_size=4",
         "ppo.micro_rollout_batch_size=4", "ppo.train_batch_size=4", "ppo.micro_train_batch_size=4",
         "ppo.generate_max_len=8", "sft.max_steps=3", "sft.eval_examples=0", "reward.warmup_examples=16",
         "reward.eval_examples=0", "runtime.threads=1")


def tree_md5(d: Path, skip: str = "\0") -> str:
    h = hashlib.md5()
    for f in sorted(p for p in d.rglob("*") if p.is_file() and skip not in p.relative_to(d).parts):
        h.update(str(f.relative_to(d)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ws_params(tmp_path_factory):
    return make_gapo_workspace(tmp_path_factory.mktemp("nan"), *SMALL)


def test_inject_spec_matches_point_and_context(monkeypatch):
    x = torch.ones(3)
    assert guards.inject_nan("ppo.reward", x, round=1, step=0) is x  # unset: untouched
    monkeypatch.setenv(guards.ENV_INJECT_NAN, "ppo.policy_loss@round=2,step=1; sft.loss@step=3")
    assert torch.isnan(guards.inject_nan("ppo.policy_loss", x, round=2, step=1)).all()
    assert torch.isfinite(guards.inject_nan("ppo.policy_loss", x, round=1, step=1)).all()
    assert torch.isfinite(guards.inject_nan("ppo.reward", x, round=2, step=1)).all()
    assert torch.isnan(guards.inject_nan("sft.loss", x, step=3)).all()
    with pytest.raises(NumericalError, match=r"^adversarial round 2 ppo step 1: advantages is not finite \(3 value"):
        guards.check_finite(guards.inject_nan("ppo.policy_loss", x, round=2, step=1), "advantages",
                            "adversarial round 2 ppo step 1")
    with pytest.raises(NumericalError, match="rm step 4: loss is not finite"):
        guards.check_finite(float("inf"), "loss", "rm step 4")


@pytest.mark.parametrize("point,expect", [
    ("ppo.reward", r"^adversarial round 3 ppo step 0: reward-model score is not finite"),
    ("ppo.advantages", r"^adversarial round 3 ppo step 0: advantages is not finite"),
])
def test_nan_in_reward_or_advantages_stops_the_rollout(ws_params, monkeypatch, point, expect):
    from gapo.train.ppo import Where, make_experience

    ws, params = ws_params
    models = build_models(ws, params)
    rows = [json.loads(line) for line in ws.jsonl("ifeval", "train").read_text().splitlines()[:4]]
    monkeypatch.setenv(guards.ENV_INJECT_NAN, f"{point}@round=3")
    with pytest.raises(NumericalError, match=expect):
        make_experience(models, rows, params, 0.01, Where(round=3, step=0))


@pytest.mark.parametrize("stage,spec,expect", [
    ("sft", "sft.loss@step=2", r"^sft step 2: loss is nan"),
    ("rm_warmup", "rm.loss@step=1", r"^rm_warmup step 1: BCE loss is nan"),
])
def test_nan_in_warmup_keeps_the_previous_checkpoint(ws_params, monkeypatch, stage, spec, expect):
    from gapo.train.reward import run_rm_warmup
    from gapo.train.sft import run_sft

    ws, params = ws_params
    ckpt = ws.sft if stage == "sft" else ws.rm_warmup
    before = tree_md5(ckpt)
    monkeypatch.setenv(guards.ENV_INJECT_NAN, spec)
    with pytest.raises(NumericalError, match=expect):
        (run_sft if stage == "sft" else run_rm_warmup)(params, ws)
    assert tree_md5(ckpt) == before
    assert not ws.metrics_file(stage).exists()


def test_nan_in_round_2_keeps_round_1_and_the_rerun_resumes_there(ws_params, monkeypatch):
    from gapo.train import adversarial as A

    ws, params = ws_params
    monkeypatch.setenv(guards.ENV_INJECT_NAN, "ppo.policy_loss@round=2,step=1")
    with pytest.raises(NumericalError, match=r"^adversarial round 2 ppo step 1: policy loss is not finite"):
        A.run_adversarial(params, ws)
    fp = A.fingerprint(params, ws)
    assert A.completed_rounds(ws, fp) == 1, "round 1 is the last good checkpoint"
    assert not (ws.round_dir(2) / A.ROUND_FILE).exists() and not ws.final.exists()
    # state/ (optimizer moments) is dropped once round 2 completes: only the last complete round is resumable
    round1 = tree_md5(ws.round_dir(1), skip="state")
    metrics = json.loads(ws.metrics_file("adversarial").read_text())
    assert metrics["rounds_completed"] == 1
    # the fault is gone: the rerun starts at round 2 from round 1's checkpoint, which it does not touch
    monkeypatch.delenv(guards.ENV_INJECT_NAN)
    summary = A.run_adversarial(params, ws)
    assert summary["rounds_run"] == [2] and summary["rounds_completed"] == 2
    assert tree_md5(ws.round_dir(1), skip="state") == round1


@pytest.mark.slow
def test_prefect_task_fails_with_the_message_and_is_not_retried(ws_params, tmp_path, monkeypatch):
    """The flow's round task runs `gapo adversarial --round 1` (a subprocess, as in production); NaN injected in the
    environment: the task run ends FAILED with the NumericalError line, after one attempt."""
    import shutil

    # a loaded machine needs more than the default 20 s to start the ephemeral API server (set before Prefect
    # reads its settings; flows/gapo_pipeline.py does the same for its own runs)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect import flow

    from gapo.config import render_params_yaml

    src, params = ws_params
    root = tmp_path / "ws"
    shutil.copytree(src.root, root, ignore=shutil.ignore_patterns("rounds", "final", "metrics"))
    (root / "params.yaml").write_text(render_params_yaml(params))
    from flows import gapo_pipeline as gp
    from flows.supervision import StageFailed

    @flow(name="nan-round")
    def one_round(root_s: str):
        return gp.run_round.with_options(retry_delay_seconds=0)(1, root_s, {"GAPO_TRACKING": "off",
                                                                            guards.ENV_INJECT_NAN: "ppo.policy_loss"},
                                                                 600)

    state = one_round(str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed) as err:
        state.result()
    msg = str(err.value)
    assert "gapo adversarial --round 1 failed (exit 2)" in msg
    assert "adversarial round 1 ppo step 1: policy loss is not finite" in msg
    assert err.value.transient is False  # a numerical fault is not retried: it would fail the same way
    assert not (root / "checkpoints" / "rounds" / "round_001" / "round.json").exists()
