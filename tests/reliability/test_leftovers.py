"""Leftovers of killed work (issue 13, item 10; gapo.sweep): the temp files and folders of atomic writes a kill -9
interrupted, and the logged-model folders of a killed `register`, are removed when the next stage starts in that
workspace, through the real CLI; what a live process still writes, and what another workspace left, stays."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.rel_helpers import kill9, tracked_env, wait_for

GAPO = str(Path(sys.executable).parent / "gapo")
SMALL_PREPARE = ["-S", "data.num_products=5", "-S", "data.test_prompts=3", "-S", "data.workers=1"]

# Interrupted mid-write by kill -9: an atomic file at the root (the flow's params.yaml) and in metrics/, an atomic
# directory (prepare's data/), the old output atomic_dir moves aside just before its swap, a TRL scratch folder.
_KILLED_WRITER = """
import sys, tempfile, time
from pathlib import Path
from gapo.io import atomic_dir, atomic_file
ws = Path(sys.argv[1])
(ws / "checkpoints").mkdir(parents=True, exist_ok=True)
old = tempfile.mkdtemp(prefix=".sft.", suffix=".old", dir=ws / "checkpoints")
(Path(old) / "x").mkdir()
with atomic_file(ws / "params.yaml") as a, atomic_file(ws / "metrics" / "prepare.json") as b, \\
        atomic_dir(ws / "data") as d, tempfile.TemporaryDirectory(prefix="gapo-dpo-", dir=ws / "checkpoints"):
    for fh in (a, b):
        fh.write("half written")
        fh.flush()
    (d / "sft").mkdir()
    (d / "sft" / "train.jsonl").write_text("{")
    print("writing", flush=True)
    time.sleep(3600)
"""

# A writer that is alive while the stage starts (it holds its temp file open): never swept.
_LIVE_WRITER = """
import sys, time
from pathlib import Path
from gapo.io import atomic_file
with atomic_file(Path(sys.argv[1]) / "reports" / "live.json") as fh:
    fh.write("still writing")
    fh.flush()
    print("writing", flush=True)
    time.sleep(3600)
"""


def _start(code: str, ws: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temp_paths(ws: Path) -> list[str]:
    from gapo.sweep import find_temp_leftovers

    return sorted(str(p.relative_to(ws)) for p in find_temp_leftovers(ws))


def test_killed_atomic_writes_are_swept_when_the_next_stage_starts(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    kill9(_start(_KILLED_WRITER, ws))
    killed = _temp_paths(ws)
    assert len(killed) == 5, killed  # params.yaml, metrics/prepare.json, data/, checkpoints/.sft.*.old, gapo-dpo-*
    assert not (ws / "params.yaml").exists() and not (ws / "data").exists()  # nothing reached its target
    for decoy in (ws / ".notes.tmp", ws / "checkpoints" / "keep.abcdefgh.tmp", ws / "checkpoints" / "gapo-mine"):
        decoy.write_text("a user's file")  # names that only look like ours
    live = _start(_LIVE_WRITER, ws)
    try:
        time.sleep(1.1)  # the live temp file is older than the stage process, so only "in use" protects it
        proc = subprocess.run([GAPO, "--workdir", str(ws), "prepare", *SMALL_PREPARE], cwd=ws,
                              env=tracked_env(GAPO_TRACKING="off"), capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "gapo: swept 5 temp file(s) of a killed run" in proc.stderr, proc.stderr[-3000:]
        left = _temp_paths(ws)
        assert len(left) == 1 and left[0].startswith("reports/.live.json."), left
    finally:
        kill9(live)
    for decoy in (ws / ".notes.tmp", ws / "checkpoints" / "keep.abcdefgh.tmp", ws / "checkpoints" / "gapo-mine"):
        assert decoy.read_text() == "a user's file"
    assert (ws / "data" / "sft" / "train.jsonl").is_file()  # the stage ran and wrote its real output


def test_a_leftover_newer_than_the_attempt_is_kept(tmp_path):
    from gapo.sweep import sweep_temp_files

    tmp = tmp_path / "metrics" / ".evaluate.json.abcd1234.tmp"
    tmp.parent.mkdir()
    tmp.write_text("{")
    mtime = tmp.stat().st_mtime
    assert sweep_temp_files(tmp_path, before=mtime - 1) == [] and tmp.exists()
    assert sweep_temp_files(tmp_path, before=mtime + 1) == [tmp] and not tmp.exists()


def _register_workspace(root: Path, tiny_model_dirs) -> Path:
    """What `register` reads: checkpoints/final/{policy,reward} and metrics/evaluate.json."""
    policy, reward = tiny_model_dirs
    shutil.copytree(policy, root / "checkpoints" / "final" / "policy")
    shutil.copytree(reward, root / "checkpoints" / "final" / "reward")
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"prompt_level_strict_acc": 0.3, "kl_to_sft": 0.01}))
    return root


def _kill_register_after_the_policy_upload(ws: Path, env: dict, marker: Path) -> None:
    proc = subprocess.Popen([GAPO, "--workdir", str(ws), "register"], cwd=ws, start_new_session=True,
                            env=dict(env, GAPO_PAUSE_AT="register.policy_logged", GAPO_PAUSE_MARKER=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: marker.is_file(), "register to log the policy", proc, timeout=1200)
    finally:
        kill9(proc)
    marker.unlink()


def test_logged_model_of_a_killed_register_is_swept_by_the_next_stage(tmp_path, tiny_model_dirs):
    """Two workspaces share one store; each has a register killed between logging the policy and registering it.
    The next stage in workspace A removes A's orphan (files and entry) and keeps B's and every registered model."""
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(db, db)
    client.search_experiments()  # create the store first: two processes migrating one new sqlite file collide
    env = tracked_env(None, MLFLOW_TRACKING_URI=db, MLFLOW_EXPERIMENT_NAME="leftovers",
                      GAPO_REGISTRY_LOCK_DIR=str(tmp_path / "locks"), GAPO_PIPELINE_KEY="leftovers-test")
    a = _register_workspace(tmp_path / "a", tiny_model_dirs)
    b = _register_workspace(tmp_path / "b", tiny_model_dirs)
    for ws in (a, b):
        _kill_register_after_the_policy_upload(ws, env, tmp_path / "marker")
    exp = client.get_experiment_by_name("leftovers")
    orphans = {m.model_id: m for m in client.search_logged_models([exp.experiment_id])}
    assert len(orphans) == 2 and not client.search_model_versions()
    folder = {mid: Path(m.artifact_location.removeprefix("file://")).parent for mid, m in orphans.items()}
    assert all(f.is_dir() and f.parent.name == "models" for f in folder.values())
    owner = {mid: client.get_run(m.source_run_id).data.tags["gapo.workspace"] for mid, m in orphans.items()}
    of_a = next(mid for mid, ws in owner.items() if ws == str(a))
    of_b = next(mid for mid, ws in owner.items() if ws == str(b))

    proc = subprocess.run([GAPO, "--workdir", str(a), "register"], cwd=a, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"gapo: swept 1 logged model(s) of a killed run: {of_a}" in proc.stderr, proc.stderr[-3000:]
    assert not folder[of_a].exists() and folder[of_b].is_dir()
    live = {m.model_id for m in client.search_logged_models([exp.experiment_id])}
    assert of_a not in live and of_b in live
    versions = client.search_model_versions()
    assert len(versions) == 2  # the rerun registered the policy and the RM; their folders are whole
    for mv in versions:
        model = client.get_logged_model(mv.source.removeprefix("models:/"))
        assert (Path(model.artifact_location.removeprefix("file://")) / "MLmodel").is_file()
