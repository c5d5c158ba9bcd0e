"""`gapo compare` end to end (slow): a 2-method x 1-paradigm x 2-seed grid through real queued `dvc exp run`s in a
scratch git repository, then reports/compare.{md,png} and the MLflow `compare` run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the tiny profile, made smaller still: the test checks the machinery (queue, run, collect, report, MLflow)
GRID = ["-S", "compare.methods=[sft,dpo]", "-S", "compare.paradigms=[pp]", "-S", "compare.seeds=[1,2]",
        "-S", "sft.max_steps=8", "-S", "reward.warmup_epochs=1", "-S", "reward.eval_examples=16",
        "-S", "data.num_products=60", "-S", "data.test_prompts=16", "-S", "evaluate.max_new_tokens=16",
        "-S", "baselines.max_steps=2", "-S", "adversarial.eval_prompts=2", "-S", "compare.jobs=1"]


@pytest.fixture
def scratch():
    # Not tmp_path: pytest keeps only the last 3 basetemp dirs, so a concurrent pytest session on the machine can
    # delete a 10-minute grid's repository under it.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gapo-compare-e2e-") as d:
        yield Path(d)


def _grid_repo(scratch: Path) -> tuple[Path, dict, list[str]]:
    """A scratch git repository holding the pipeline (root, environment, `gapo` command)."""
    root = scratch / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    for name in ("gapo", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    env = {**os.environ, "GAPO_TRACKING": "on", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "grid"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return root, env, [str(Path(sys.executable).parent / "gapo")]


@pytest.mark.slow
def test_compare_grid_end_to_end(scratch):
    root, env, gapo = _grid_repo(scratch)
    original_params = (root / "params.yaml").read_bytes()
    proc = subprocess.run([*gapo, "--profile", "tiny", *GRID, "compare"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    md = (root / "reports" / "compare.md").read_text()
    assert "| sft | 2 |" in md and "| dpo | 2 |" in md and "(4/4 experiments finished)" in md
    assert (root / "reports" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # the grid's seeds are train_seed: both sft experiments evaluate the one SFT policy DVC built once
    import json

    sft = json.loads((root / "reports" / "compare.json").read_text())["tables"]["main"]["pp"]["sft"]["overall"]
    assert sft["n"] == 2 and sft["std"] == 0.0
    # the paper's claim "SFT beats DPO", tested on both seeds' answers read back through DVC at each experiment
    claims = json.loads((root / "reports" / "compare.json").read_text())["claims"]
    (row,) = claims["method_order"]
    assert (row["a"], row["b"], row["seeds"]) == ("sft", "dpo", [1, 2]) and row["n_pairs"] == 2 * row["n_prompts"] > 0
    assert f"| pp | sft > dpo (78.3 vs 33.3) | 2 × {row['n_prompts']} |" in md and "no per-prompt answers" not in md
    assert (root / "params.yaml").read_bytes() == original_params  # restored after queueing
    # both files were logged to the `compare` stage's MLflow run in the workspace's store
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("mlflow.runName") == "compare"]
    assert runs, "no compare run in MLflow"
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "compare")}
    assert {"compare/compare.md", "compare/compare.png"} <= arts
    assert any(k.startswith("compare/pp/dpo/") for k in runs[0].data.metrics)
    # one verdict per paper claim the grid tests: only the baselines' order here, decided by its one row
    status = {"holds": "holds", "reversed": "fails"}.get(row["verdict"], "unresolved")
    paper = json.loads((root / "reports" / "compare.json").read_text())["paper_claims"]
    assert [(c["id"], c["status"]) for c in paper] == [("baseline_order", status)]
    assert runs[0].data.tags["claim.baseline_order"] == status
    assert f"**The baselines rank SFT > PPO > KTO > DPO (Table 4): {status}.**" in md
    # a second call reuses the finished experiments instead of queueing them again
    again = subprocess.run([*gapo, "--profile", "tiny", *GRID, "compare"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and '"queued": 0' in again.stdout and '"reused": 4' in again.stdout


def _grid_experiments(root: Path) -> dict[str, str]:
    """{experiment name: commit} of the grid's experiments, from DVC's git refs (refs/exps/<baseline>/<name>)."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    refs = (line.split() for line in out.splitlines())
    return {ref.rsplit("/", 1)[1]: sha for sha, ref in refs if ref.rsplit("/", 1)[1].startswith("cmp-")}


def _queue_status_names(root: Path, env: dict) -> list[str]:
    out = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True, text=True, check=True)
    return [line.split()[1] for line in out.stdout.splitlines() if line.split()[1:2] and line.split()[1].startswith("cmp-")]


@pytest.mark.slow
def test_compare_rerun_reuses_the_finished_experiment(scratch, monkeypatch):
    """A grid stopped after its first experiment, with the second one still in DVC's queue, then run again: the
    finished point is reused (its experiment commit is untouched) and the queued one runs once, not queued a
    second time. Then the ledger: a fresh clone continues the finished grid, a new commit of the same code too, and
    one with other code is refused. The seeds are not part of the grid id, so a one-seed grid followed by queueing the second seed
    without running it leaves the repository as an interrupted two-seed grid would."""
    from gapo.config import load_params
    from gapo.compare import grid as C
    from gapo.paths import Workspace

    root, env, gapo = _grid_repo(scratch)
    knobs = [a for pair in zip(GRID[::2], GRID[1::2]) if not pair[1].startswith("compare.") for a in pair]
    one_point = [*knobs, "-S", "compare.methods=[sft]", "-S", "compare.paradigms=[pp]"]

    first = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1]", "compare"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
    assert '"queued": 1' in first.stdout and '"reused": 0' in first.stdout
    before = _grid_experiments(root)
    assert len(before) == 1 and next(iter(before)).endswith("-sft-pp-s1")

    # the interruption: the two-seed grid queued its missing point, then stopped before running the queue
    params = load_params(root / "params.yaml", [*one_point[1::2], "compare.seeds=[1,2]"], profile="tiny")
    monkeypatch.setattr(C, "_run_queue", lambda ws, jobs, **kw: True)  # queued, never run
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, env[key])
    assert C.queue_and_run(params, Workspace(root))["queued"] == 1
    monkeypatch.undo()
    s2 = next(iter(before))[:-1] + "2"
    assert _queue_status_names(root, env).count(s2) == 1

    again = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1,2]", "compare"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-2000:]
    assert '"queued": 0' in again.stdout and '"already_queued": 1' in again.stdout and '"reused": 1' in again.stdout
    after = _grid_experiments(root)
    (s1, sha), = before.items()
    assert after[s1] == sha  # not rerun: a recomputed experiment would be a new commit
    assert set(after) == {s1, s2}
    assert _queue_status_names(root, env).count(s2) == 1  # run once
    assert "(2/2 experiments finished)" in (root / "reports" / "compare.md").read_text()

    # the ledger kept both (one JSON each, to commit): a fresh clone, with none of DVC's experiments or cache,
    # continues the grid from it and queues nothing
    runs = root / "reports" / "compare_runs"
    assert sorted(f.stem for f in runs.glob("*.json")) == sorted(after)
    for cmd in (["git", "add", "reports/compare_runs"], ["git", "commit", "-qm", "ledger"],
                ["git", "clone", "-q", str(root), str(scratch / "clone")]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    clone = scratch / "clone"
    fresh = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1,2]", "compare"],
                           cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert '"queued": 0' in fresh.stdout and '"reused": 2' in fresh.stdout and not _grid_experiments(clone)
    assert "(2/2 experiments finished)" in (clone / "reports" / "compare.md").read_text()

    # HEAD moves on mid-grid (a `git pull`) with the experiments' code unchanged: the grid is the same, nothing runs
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "moved on"], cwd=root, env=env, check=True)
    moved = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1,2]", "compare"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert moved.returncode == 0 and '"queued": 0' in moved.stdout and '"reused": 2' in moved.stdout, moved.stderr
    # ... with the SFT code changed: the grid is not continued on other code, and its report is still collected
    with open(root / "gapo" / "train" / "sft.py", "a") as fh:
        fh.write("# changed\n")
    subprocess.run(["git", "commit", "-qam", "sft changed"], cwd=root, env=env, check=True)
    changed = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1,2]", "compare"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "holds 2 finished experiments of other code" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    assert _queue_status_names(root, env).count(s2) == 1 and _grid_experiments(root) == after
    (root / "reports" / "compare.md").unlink()
    collected = subprocess.run([*gapo, "--profile", "tiny", *one_point, "-S", "compare.seeds=[1,2]", "compare",
                                "--collect-only"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert "(2/2 experiments finished)" in (root / "reports" / "compare.md").read_text()


def _kill_processes_under(root: Path) -> int:
    """SIGKILL every process whose working directory is inside `root`: DVC's queue worker and executor start their
    own sessions, so killing the `gapo compare` process group leaves them running, as a machine shutdown would not."""
    import signal

    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                os.kill(int(pid), signal.SIGKILL)
                n += 1
        except OSError:
            continue
    return n


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc to find DVC's detached workers")
def test_compare_resumes_after_a_kill_mid_experiment(scratch):
    """The grid is killed (SIGKILL to everything it started) while its second experiment runs. DVC then lists that
    experiment as running with no process behind it; the rerun fails and requeues it instead of waiting for it
    forever, and keeps the finished first experiment."""
    import signal
    import time

    root, env, gapo = _grid_repo(scratch)
    args = [*gapo, "--profile", "tiny", *GRID, "-S", "compare.seeds=[1]", "compare"]
    log = open(scratch / "first.log", "w")
    first = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 1200
    while not _grid_experiments(root):
        assert first.poll() is None and time.time() < deadline, (scratch / "first.log").read_text()[-3000:]
        time.sleep(2)
    before = _grid_experiments(root)
    time.sleep(15)  # into the second experiment
    os.killpg(first.pid, signal.SIGKILL)
    assert _kill_processes_under(root) > 0  # DVC's worker and executor outlived the process group
    first.wait()
    status = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True, text=True).stdout
    assert "Running" in status and "0 active" in status  # the stale task the rerun must not wait for

    again = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-2000:]
    assert '"restarted": 1' in again.stdout and '"reused": 1' in again.stdout
    after = _grid_experiments(root)
    assert len(after) == 2 and all(after[k] == v for k, v in before.items())
    assert "(2/2 experiments finished)" in (root / "reports" / "compare.md").read_text()
