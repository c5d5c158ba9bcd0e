"""Fixtures of the reliability tests; helpers live in rel_helpers.py."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rel_helpers  # noqa: E402,F401  (puts tests/orchestration and tests/models on sys.path)
from rel_helpers import (assert_no_survivors, find_stage_process, kill9, make_repo_copy, start,  # noqa: E402
                         tracked_env, venv_bin, wait_for)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """(policy, reward): a 2-layer Llama and a 2-layer BERT classifier (tests/orchestration/tiny_models)."""
    from tiny_models import build_policy, build_reward

    root = tmp_path_factory.mktemp("rel-models")
    return build_policy(root / "policy"), build_reward(root / "reward")


# The e2e test's tiny pipeline (tests/orchestration/test_pipeline_e2e.py FAST): a few prompts and steps per stage.
FAST = ("data.num_products=40", "data.prompts_per_product=1", "data.test_prompts=12", "data.workers=1",
        "sft.max_steps=3", "sft.eval_examples=4", "sft.optim.micro_batch_size=4",
        "reward.warmup_examples=32", "reward.eval_examples=8", "reward.optim.micro_batch_size=8",
        "reward.max_length=128", "adversarial.rounds=2", "adversarial.prompts_per_round=4",
        "adversarial.eval_prompts=4", "ppo.rollout_batch_size=4", "ppo.micro_rollout_batch_size=4",
        "ppo.train_batch_size=4", "ppo.micro_train_batch_size=4", "ppo.episodes_per_round=1",
        "ppo.generate_max_len=12", "ppo.prompt_max_len=128", "evaluate.max_prompts=6", "evaluate.max_new_tokens=12",
        "evaluate.batch_size=6", "tracking.system_metrics_interval_s=2")
IN_STAGE_S = 10.0  # how long a stage has been running when it is killed (it is killed mid-work, not at start-up)


def _lock(root: Path) -> dict:
    import yaml

    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}


def _new_logged_model(root: Path, since: float):
    base = root / "mlartifacts" / "models"
    if not base.is_dir():
        return None
    return next((p for p in base.iterdir() if p.stat().st_mtime > since), None)


def _kill_in_stage(proc, root: Path, stage: str, log: Path, extra=None, args: tuple[str, ...] = ()) -> None:
    """Wait for `gapo <stage> [args]` to run, then for `extra(t_started)` (default: IN_STAGE_S seconds), then
    SIGKILL the whole process group and check that nothing survived."""
    def running():
        return find_stage_process(root, stage, args)

    wait_for(running, f"gapo {stage} {' '.join(args)} to start", proc, log=log)
    t0 = time.time()
    if extra is None:
        extra = lambda t: time.time() - t > IN_STAGE_S  # noqa: E731
    wait_for(lambda: extra(t0), f"gapo {stage} to reach the kill point", proc, log=log)
    assert running(), f"{stage} ended before the kill; nothing was tested\n" + log.read_text(errors="replace")[-3000:]
    kill9(proc)
    assert_no_survivors(root)


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

    def step(name, cmd, kill=None):
        t0 = time.time()
        proc = start(cmd, root, env, log)
        if kill is None:
            rc = proc.wait(timeout=3600)
            assert rc == 0, f"{name}: exit {rc}\n" + log.read_text(errors="replace")[-6000:]
        else:
            kill(proc)
        timings[name] = round(time.time() - t0, 1)

    # A1: dvc repro, killed in SFT. Nothing of SFT reaches dvc.lock or the cache.
    step("A1 dvc repro killed in sft", dvc, lambda p: _kill_in_stage(p, root, "sft", log))
    facts["A1_lock"] = set(_lock(root))
    # A2: killed in RM warm-up
    step("A2 dvc repro killed in rm_warmup", dvc, lambda p: _kill_in_stage(p, root, "rm_warmup", log))
    facts["A2_lock"] = set(_lock(root))
    # A3: killed in round 2, once round 1 is complete on disk
    r1 = root / "checkpoints" / "rounds" / "round_001" / "round.json"
    step("A3 dvc repro killed in round 2", dvc,
         lambda p: _kill_in_stage(p, root, "adversarial", log, extra=lambda t0: r1.is_file()
                                  and time.time() - r1.stat().st_mtime > IN_STAGE_S))
    facts["round1"] = r1.read_text()
    facts["round2_after_A3"] = (root / "checkpoints" / "rounds" / "round_002" / "round.json").exists()
    # P1: the Prefect flow (ephemeral API server) picks up, killed in round 2 again
    step("P1 prefect flow killed in round 2", flow,
         lambda p: _kill_in_stage(p, root, "adversarial", log, args=("--round", "2")))
    facts["round1_after_P1"] = r1.read_text()
    # P2: the flow again, killed while `gapo register` logs the models to MLflow
    step("P2 prefect flow killed in register", flow,
         lambda p: _kill_in_stage(p, root, "register", log, extra=lambda t0: _new_logged_model(root, t0)))
    facts["round1_after_P2"] = r1.read_text()
    facts["round2_after_P2"] = (root / "checkpoints" / "rounds" / "round_002" / "round.json").is_file()
    # A4: dvc repro, killed in register too
    step("A4 dvc repro killed in register", dvc,
         lambda p: _kill_in_stage(p, root, "register", log, extra=lambda t0: _new_logged_model(root, t0)))
    # A5: finishes
    step("A5 dvc repro finishes", dvc)
    (root.parent / "timings.json").write_text(json.dumps(timings, indent=2))
    (root.parent / "facts.json").write_text(json.dumps(facts, indent=2, default=sorted))
    print("crash-resume timings (s):", json.dumps(timings))
    return root, facts, timings, log
