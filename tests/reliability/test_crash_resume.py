"""Crash-resume: kill -9 the pipeline at every kind of place, rerun, and lose only the work in flight.

One throw-away copy of the repo (tiny profile, made smaller with -S overrides) goes through this sequence (the
`crashed` fixture, tests/reliability/conftest.py); each kill is SIGKILL to the process group of the pipeline
command (`dvc repro` and the stage it runs; the flow process and its ephemeral API server; the flow's stage runs
in its own session and gets SIGTERM from the flow's death, PR_SET_PDEATHSIG). No process may survive a kill:

  A1 `dvc repro`          killed in SFT
  A2 `dvc repro`          killed in RM warm-up          (prepare, models skipped; SFT redone from scratch)
  A3 `dvc repro`          killed in adversarial round 2 (round 1 complete on disk)
  P1 Prefect flow         killed in round 2             (round 1 is not redone)
  P2 Prefect flow         killed during registration    (round 2 resumed and completed, evaluate ran)
  A4 `dvc repro`          killed during registration
  A5 `dvc repro`          finishes

Then: `dvc status` is clean, every object in the DVC cache hashes to its name, round 1 was written exactly once,
both registered champions are complete models, and an uninterrupted run of the adversarial stage and of
evaluate from the same inputs (in a copy) gives the same final weights and the same metrics (exact on CPU).
Measured times: docs/reliability.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gapo.io import content_hash
from tests.reliability.rel_helpers import SECRETS, dvc_cache_is_intact, grep_tree, run, tracked_env, venv_bin

pytestmark = pytest.mark.slow


def test_each_kill_left_dvc_consistent_and_the_rerun_finished(crashed):
    root, facts, timings, log = crashed
    assert "sft" not in facts["A1_lock"] and {"prepare", "models"} <= facts["A1_lock"]
    assert "rm_warmup" not in facts["A2_lock"] and "sft" in facts["A2_lock"]
    assert not facts["round2_after_A3"], "round 2 must not be marked complete by a killed run"
    out = run([venv_bin("dvc"), "status", "--json"], root).stdout
    assert json.loads(out or "{}") == {}
    assert dvc_cache_is_intact(root) > 10
    text = log.read_text(errors="replace")
    # A2 onwards reuse the completed stages instead of redoing them
    assert "Stage 'prepare' didn't change, skipping" in text and "Stage 'sft' didn't change, skipping" in text


def test_adversarial_resumed_from_the_last_completed_round(crashed):
    root, facts, _, _ = crashed
    r1 = root / "checkpoints" / "rounds" / "round_001" / "round.json"
    # round 1 was completed by A3 and never redone by P1, P2, A4, A5 (completed_at and metrics unchanged)
    assert facts["round1"] == facts["round1_after_P1"] == facts["round1_after_P2"] == r1.read_text()
    assert facts["round2_after_P2"]
    assert json.loads((root / "metrics" / "adversarial.json").read_text())["rounds_completed"] == 2


def test_resumed_results_equal_an_uninterrupted_run(crashed, tmp_path):
    """Same inputs, no kill: the adversarial stage and evaluate from scratch in a copy give identical weights and
    metrics (CPU, fixed seed, deterministic kernels: tolerance 0 except wall-clock fields)."""
    root, _, _, _ = crashed
    ref = tmp_path / "ref"
    shutil.copytree(root, ref, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", ".prefect-home"))
    shutil.rmtree(ref / "checkpoints" / "rounds")
    shutil.rmtree(ref / "checkpoints" / "final")
    env = tracked_env(ref, GAPO_TRACKING="off")
    run([venv_bin("gapo"), "adversarial"], ref, env, timeout=3600)
    run([venv_bin("gapo"), "evaluate"], ref, env, timeout=3600)
    for sub in ("policy", "reward"):
        assert content_hash(ref / "checkpoints" / "final" / sub / "model.safetensors") == \
            content_hash(root / "checkpoints" / "final" / sub / "model.safetensors"), f"final {sub} differs"
    def wall_clock(key: str) -> bool:  # durations, rates and dates: the only fields allowed to differ
        return (key.startswith("timing") or key.endswith(("_s", "seconds", "per_s", "_at"))
                or key in ("seconds", "completed_at"))

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not wall_clock(k)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    for name in ("adversarial", "evaluate"):
        got = strip(json.loads((root / "metrics" / f"{name}.json").read_text()))
        want = strip(json.loads((ref / "metrics" / f"{name}.json").read_text()))
        assert got == want, f"metrics/{name}.json differs from the uninterrupted run"


def test_registry_holds_only_complete_models(crashed):
    """Two registrations were killed mid-upload; the aliases point at versions whose artifacts are whole."""
    import mlflow
    from safetensors.torch import load_file

    root, _, _, _ = crashed
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    reg = json.loads((root / "metrics" / "register.json").read_text())
    for name in ("gapo-policy", "gapo-reward-model"):
        for alias in ("candidate", "champion"):
            mv = client.get_model_version_by_alias(name, alias)
            assert mv.status == "READY"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == \
            str(reg["policy_version" if name == "gapo-policy" else "reward_model_version"])
        for mv in client.search_model_versions(f"name='{name}'"):
            assert mv.status == "READY", f"{name} v{mv.version}: {mv.status}"
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/gapo-policy@champion", tracking_uri=uri))
    weights = list(local.rglob("*.safetensors"))
    assert (local / "MLmodel").is_file() and weights
    for w in weights:
        load_file(str(w))  # a truncated file would not parse


def test_secrets_and_servers_across_the_whole_run(crashed):
    """The fake credentials in the environment of every run above are nowhere: not in mlflow.db (params, tags,
    metrics), the MLflow artifacts, Prefect's database and logs, the DVC cache, the workspace or the output; the
    Prefect API server the flow started listened on loopback."""
    root, _, _, log = crashed
    text = log.read_text(errors="replace")
    assert "Starting temporary server on http://127.0.0.1:" in text
    needles = list(SECRETS.values())
    assert not [n for n in needles if n in text]
    assert not grep_tree(root, needles, skip=("tests",))  # tests/: the copied source, which defines them
