"""Process supervision of the stages the Prefect flow runs (flows/gapo_pipeline.py): each `gapo <stage>` or `dvc`
command in its own process group, its output streamed to the task log, killed whole on timeout, on cancellation,
and when the flow process dies; failures classified as transient (retried) or not. No Prefect state: unit-tested
in tests/orchestration/test_flow_unit.py.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

USER_ERROR_EXIT = 2           # gapo's exit code for a GapoError (bad params/data/model path): retrying won't help
INTERRUPTED_EXIT = 130


class StageFailed(RuntimeError):
    def __init__(self, what: str, returncode: int | None, tail: str, transient: bool):
        super().__init__(f"{what} failed (exit {returncode}){': ' + tail if tail else ''}")
        self.returncode, self.transient = returncode, transient


def gapo_exe() -> str:
    """The `gapo` next to this interpreter (a worker started from the venv), else the one on PATH."""
    local = Path(sys.executable).with_name("gapo")
    return str(local) if local.exists() else (shutil.which("gapo") or "gapo")


def dvc_exe() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


_LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_live_groups() -> None:
    """The stages run in their own process groups (a timeout kills a whole group), so a cancelled or killed flow
    run would not take them down by itself: whatever is still running when this process exits is stopped."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the flow process dies. atexit does not run on kill -9 (or an OOM
    kill) of the flow, and a stage in its own session would outlive it and race the rerun's stage in the same
    workspace (docs/reliability.md). Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_logged(cmd: list[str], root: Path, env: dict[str, str] | None, timeout_s: float, what: str,
               log=None) -> None:
    """Run `cmd` in its own process group, streaming its output to `log`; kill the whole group on timeout.
    Raises StageFailed (transient unless the exit code says user error / interrupt, or it timed out)."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True, preexec_fn=_die_with_parent)
    _LIVE_GROUPS.add(proc.pid)
    deadline = time.monotonic() + timeout_s
    timed_out = False
    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if log is not None and line.strip():
                log.info(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                kill_group(proc)
                break
            time.sleep(0.5)
    except BaseException:  # flow cancelled / KeyboardInterrupt: never leave a training process behind
        kill_group(proc)
        _LIVE_GROUPS.discard(proc.pid)
        raise
    finally:
        reader.join(timeout=10)
    rc = proc.wait()
    _LIVE_GROUPS.discard(proc.pid)
    if timed_out:
        raise StageFailed(f"{what} (timed out after {timeout_s:.0f} s)", rc, "", transient=False)
    if rc != 0:
        last = _failure_line(tail)
        raise StageFailed(what, rc, last, transient=rc not in (USER_ERROR_EXIT, INTERRUPTED_EXIT))


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _failure_line(tail) -> str:
    """What the task's failure message quotes: gapo's one-line `error: ...` when there is one (a progress bar
    closed at exit would otherwise be the last line, e.g. a bare cursor-up escape), else the last visible line."""
    visible = [_ANSI.sub("", line).split("\r")[-1].strip() for line in tail]
    return (next((line for line in reversed(visible) if line.startswith("error: ")), None)
            or next((line for line in reversed(visible) if line), ""))


def kill_group(proc: subprocess.Popen, first: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Stop a process started with start_new_session=True and everything in its group: `first`, then SIGKILL after
    `grace_s`. SIGTERM first lets a stage close its MLflow run as KILLED and a server stop its workers; the group
    (not the pid) because a stage's ranks and a server's workers are its children."""
    for sig, wait in ((first, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
