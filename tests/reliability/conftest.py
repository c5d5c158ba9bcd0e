"""Fixtures of the reliability tests; helpers live in rel_helpers.py."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.orchestration.fast_pipeline import FAST_PIPELINE
from tests.reliability import rel_helpers
from tests.reliability.rel_helpers import (assert_no_survivors, find_stage_process, kill9, make_repo_copy, start,
                         tracked_env, venv_bin, wait_for)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """(policy, reward): a 2-layer Llama and a 2-layer BERT classifier (tests/orchestration/tiny_models)."""
    from tests.orchestration.tiny_models import build_policy, build_reward

    root = tmp_path_factory.mktemp("rel-models")
    return build_policy(root / "policy"), build_reward(root / "reward")


# The e2e test's tiny pipeline (tests/orchestration): a few prompts and steps per stage.
FAST = FAST_PIPELINE


def _lock(root: Path) -> dict:
    import yaml

    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}


def _kill_in_stage(proc, root: Path, stage: str, log: Path, marker: Path, point: str,
                   args: tuple[str, ...] = ()) -> None:
    """Wait for `gapo <stage> [args]` to block at pause point `point` (gapo.train.guards.pause_point: mid-work,
    e.g. after SFT's first optimizer step), then SIGKILL the whole process group and check nothing survived.
    The point, not a delay, decides where the kill lands, so it lands mid-stage on a fast or a loaded machine."""
    def running():
        return find_stage_process(root, stage, args)

    wait_for(lambda: marker.is_file() and marker.read_text() == point, f"gapo {stage} to reach {point}", proc,
             log=log)
    assert running(), f"{stage} is not the process at {point}\n" + log.read_text(errors="replace")[-3000:]
    kill9(proc)
    assert_no_survivors(root)
    marker.unlink()


@pytest.fixture(scope="session")
def crashed(tmp_path_factory):
    """The kill -9 sequence of test_crash_resume.py (A1..A5, P1, P2) on one tiny repo copy; session-scoped: the
    concurrency tests start from the finished repo."""
    import os

    if os.environ.get("GAPO_CRASH_REPO"):  # reuse a finished sequence (its repo dir) when iterating on the asserts
        root = Path(os.environ["GAPO_CRASH_REPO"])
        facts = json.loads((root.parent / "facts.json").read_text())
        facts["A1_lock"], facts["A2_lock"] = set(facts["A1_lock"]), set(facts["A2_lock"])
        return root, facts, json.loads((root.parent / "timings.json").read_text()), root.parent / "crash.log"
    root = make_repo_copy(tmp_path_factory.mktemp("crash") / "repo", "tiny", FAST)
    env = tracked_env(root, **rel_helpers.SECRETS)  # fake credentials: grepped for afterwards
    log = root.parent / "crash.log"
    timings: dict[str, float] = {}
    facts: dict = {}
    dvc, flow = [venv_bin("dvc"), "repro"], [sys.executable, "flows/gapo_pipeline.py"]

    marker = root.parent / "pause-marker"

    def step(name, cmd, point=None, stage=None, args=()):
        """Run `cmd`; with `point`, every process it starts blocks at that pause point and `stage` is killed there."""
        t0 = time.time()
        step_env = dict(env, GAPO_PAUSE_AT=point, GAPO_PAUSE_MARKER=str(marker)) if point else env
        proc = start(cmd, root, step_env, log)
        if point is None:
            rc = proc.wait(timeout=3600)
            assert rc == 0, f"{name}: exit {rc}\n" + log.read_text(errors="replace")[-6000:]
        else:
            _kill_in_stage(proc, root, stage, log, marker, point, args)
        timings[name] = round(time.time() - t0, 1)

    # A1: dvc repro, killed in SFT (after its first step). Nothing of SFT reaches dvc.lock or the cache.
    step("A1 dvc repro killed in sft", dvc, "sft.step1", "sft")
    facts["A1_lock"] = set(_lock(root))
    # A2: killed in RM warm-up
    step("A2 dvc repro killed in rm_warmup", dvc, "rm_warmup.step1", "rm_warmup")
    facts["A2_lock"] = set(_lock(root))
    # A3: killed in round 2 (round 1 complete on disk; round 2 has its fakes and one RM step)
    r1 = root / "checkpoints" / "rounds" / "round_001" / "round.json"
    step("A3 dvc repro killed in round 2", dvc, "round 2 rm.step1", "adversarial")
    assert r1.is_file()
    facts["round1"] = r1.read_text()
    facts["round2_after_A3"] = (root / "checkpoints" / "rounds" / "round_002" / "round.json").exists()
    # P1: the Prefect flow (ephemeral API server) picks up, killed in round 2 again
    step("P1 prefect flow killed in round 2", flow, "round 2 rm.step1", "adversarial", ("--round", "2"))
    facts["round1_after_P1"] = r1.read_text()
    # P2: the flow again, killed while `gapo register` logs the models to MLflow (the policy is logged)
    step("P2 prefect flow killed in register", flow, "register.policy_logged", "register")
    facts["round1_after_P2"] = r1.read_text()
    facts["round2_after_P2"] = (root / "checkpoints" / "rounds" / "round_002" / "round.json").is_file()
    # A4: dvc repro, killed in register too
    step("A4 dvc repro killed in register", dvc, "register.policy_logged", "register")
    # A5: finishes
    step("A5 dvc repro finishes", dvc)
    (root.parent / "timings.json").write_text(json.dumps(timings, indent=2))
    (root.parent / "facts.json").write_text(json.dumps(facts, indent=2, default=sorted))
    print("crash-resume timings (s):", json.dumps(timings))
    return root, facts, timings, log
