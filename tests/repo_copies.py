"""Throw-away copies of the repo and the processes the end-to-end tests run in them (tests/orchestration,
tests/reliability).

Pipelines never run in the checkout itself: `make_repo_copy` copies the files git knows about (tracked, plus
untracked files that are not ignored) into a temp dir, writes params.yaml from the tiny profile, then
`git init` + commit there (DVC experiments need a commit and a git identity).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def venv_bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def tracked_env(root: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for processes a test starts: tracking on, no inherited parent run, repo copy importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAPO_", "MLFLOW_", "DVC_"))}
    env.update({"GAPO_TRACKING": "on", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
    if root is not None:
        env["PYTHONPATH"] = str(root)
        env["GAPO_REGISTRY_LOCK_DIR"] = str(root / ".locks")
        env["PREFECT_HOME"] = str(root / ".prefect-home")
    env.update(extra)
    return env


def repo_files(repo: Path = REPO) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                         capture_output=True, text=True, check=True)
    return sorted({f for f in out.stdout.split("\0") if f and (repo / f).is_file()})


def make_repo_copy(dest: Path, profile: str | None = "tiny", overrides: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in repo_files():
        if rel.startswith(("dvc.lock", "params.yaml", "metrics/", "plots/")):
            continue  # generated: each copy starts from a clean pipeline state
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    env = tracked_env(dest)
    cmd = [venv_bin("gapo"), "config", "--write", "params.yaml"]
    if profile:
        cmd[1:1] = ["--profile", profile]
    for o in overrides:
        cmd += ["-S", o]
    subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, text=True)
    git = ["git", "-c", "user.email=tests@localhost", "-c", "user.name=tests"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "config", "user.email", "tests@localhost"], cwd=dest, check=True)
    subprocess.run(["git", "config", "user.name", "tests"], cwd=dest, check=True)
    # A private DVC remote: tests never push into the shared ~/.cache/gapo/dvc-remote.
    subprocess.run([venv_bin("dvc"), "remote", "modify", "--local", "local", "url", str(dest / ".dvc-remote")],
                   cwd=dest, check=True, capture_output=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test copy"], cwd=dest, check=True)
    return dest


def run(cmd: list[str], root: Path, env: dict | None = None, timeout: float = 1800, check: bool = True):
    proc = subprocess.run(cmd, cwd=root, env=env or tracked_env(root), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc
