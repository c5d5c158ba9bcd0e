"""Shared helpers of the reliability tests: repo copies (tests/repo_copies), process-group kills, and integrity
checks of the DVC cache and the MLflow registry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from gapo.io import content_hash
from tests.repo_copies import REPO, make_repo_copy, run, tracked_env, venv_bin  # noqa: F401  (the reliability tests' one import)


def start(cmd: list[str], root: Path, env: dict, log: Path) -> subprocess.Popen:
    """A pipeline command in its own process group (so kill -9 takes it down whole, children included)."""
    fh = open(log, "ab")
    fh.write(f"\n$ {' '.join(cmd)}\n".encode())
    fh.flush()
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def procs_in(root: Path) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose working directory is under `root`."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        try:
            cwd = p.info["cwd"]
            if cwd and (cwd == str(root) or cwd.startswith(str(root) + os.sep)) and p.info["status"] != "zombie":
                out.append((p.pid, " ".join(p.info["cmdline"] or [])))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def assert_no_survivors(root: Path, timeout: float = 30.0) -> None:
    """Nothing started in `root` outlives the kill (a surviving stage would race the rerun)."""
    deadline = time.time() + timeout
    left = procs_in(root)
    while left and time.time() < deadline:
        time.sleep(1)
        left = procs_in(root)
    assert not left, f"processes survived the kill: {left}"


def find_stage_process(root: Path, stage: str, args: tuple[str, ...] = ()) -> int | None:
    """pid of a live `gapo ... <stage> <args...>` started in `root`."""
    for pid, cmd in procs_in(root):
        argv = cmd.split()
        if not any(Path(a).name == "gapo" for a in argv[:3]) or stage not in argv:
            continue
        tail = argv[argv.index(stage) + 1:]
        if all(a in tail for a in args):
            return pid
    return None


def wait_for(pred, what: str, proc: subprocess.Popen | None = None, timeout: float = 900.0, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"waiting for {what}: the process exited ({proc.returncode})\n{tail}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def dvc_cache_is_intact(root: Path) -> int:
    """Every file object in .dvc/cache hashes to its own name (a half-written object would not); returns the
    number checked. Directory manifests (*.dir) must parse as JSON."""
    n = 0
    base = root / ".dvc" / "cache" / "files" / "md5"
    for f in base.rglob("*"):
        if not f.is_file():
            continue
        name = f.parent.name + f.name
        if name.endswith(".dir"):
            json.loads(f.read_text())
            name = name[:-4]
        else:
            assert content_hash(f) == name, f"DVC cache object {f} does not match its hash"
        n += 1
    return n


# Fake credentials put in the environment of pipeline runs; none may ever show up in MLflow, Prefect or a log.
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "s3cr3t-XYZ-mlflow", "AWS_SECRET_ACCESS_KEY": "s3cr3t-XYZ-aws",
           "HF_TOKEN": "hf_s3cr3tXYZtoken"}


def grep_tree(root: Path, needles: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Files under `root` whose bytes contain one of `needles` (databases, artifacts and logs included); `skip`:
    top-level folders not to read (a repo copy's tests/ holds the needles themselves)."""
    hits = []
    for f in root.rglob("*"):
        if f.relative_to(root).parts[0] in skip:
            continue
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f}: {n}" for n in needles if n.encode() in data]
    return hits
