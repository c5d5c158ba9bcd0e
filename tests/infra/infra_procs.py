"""Start, probe and stop real server processes for the infra tests (MLflow, Prefect, a Prefect worker).

Servers take 15-40 s to answer on a loaded 2-core machine (stack-notes §4-§5), so every wait is long and
fails with the tail of the server's log. Processes are started in their own session and stopped with all
their descendants, each by PID (mlflow server spawns uvicorn and job-runner children)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: dict[str, str], home: Path) -> dict[str, str]:
    """The test process's environment without any Prefect/MLflow client settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) or k in ("PREFECT_SERVER_ANALYTICS_ENABLED",
                                                                  "MLFLOW_DISABLE_TELEMETRY")}
    env.update({"PATH": VENV_BIN + os.pathsep + env.get("PATH", ""), "HOME": str(home), "DO_NOT_TRACK": "true",
                "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update(extra)
    return env


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None):
        self.name, self.log = name, log
        self.started = time.monotonic()
        self._log_fh = open(log, "wb")
        self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, first_signal: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Signal the process and every descendant by PID; SIGKILL whatever is left after `timeout`."""
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(first_signal)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log_fh.close()


def http(method: str, url: str, body: bytes | None = None, auth: tuple[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http_ok(url: str, proc: Proc, timeout: float = 150.0) -> float:
    """Poll `url` until it answers 200; returns the seconds since the process started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode} before {url} answered:\n"
                                 f"{proc.tail()}")
        try:
            if http("GET", url, timeout=5)[0] == 200:
                return time.monotonic() - proc.started
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{proc.name}: {url} did not answer 200 within {timeout:.0f} s:\n{proc.tail()}")
