"""The flow's plain helpers: params overrides, subprocess timeout/kill and failure classes, the DVC cache key,
the retry condition. Real DVC on a one-stage project; no Prefect server needed."""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.repo_copies import run, venv_bin

from flows import gapo_pipeline as fp
from flows import supervision


def test_configure_params_writes_profile_and_overrides(tmp_path):
    assert fp.configure_params(tmp_path, None, []) is True  # missing params.yaml: generated from the defaults
    assert fp.configure_params(tmp_path, None, []) is False
    assert fp.configure_params(tmp_path, "tiny", ["ppo.init_kl_coef=0.05", "params.yaml:adversarial.rounds=1"])
    tree = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert tree["ppo"]["init_kl_coef"] == 0.05 and tree["adversarial"]["rounds"] == 1
    assert tree["models"]["policy"] == "builtin:llama-tiny"
    # idempotent: the same profile and overrides leave the file as it is
    assert fp.configure_params(tmp_path, "tiny", ["ppo.init_kl_coef=0.05", "adversarial.rounds=1"]) is False
    from gapo.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.no_such_knob"):
        fp.configure_params(tmp_path, None, ["ppo.no_such_knob=1"])


def test_run_logged_failure_classes(tmp_path):
    lines = []

    class Log:
        def info(self, msg):
            lines.append(msg)

    supervision.run_logged([sys.executable, "-c", "print('hello')"], tmp_path, None, 60, "ok", Log())
    assert lines == ["hello"]
    with pytest.raises(supervision.StageFailed) as crash:
        supervision.run_logged([sys.executable, "-c", "import sys; print('boom'); sys.exit(1)"], tmp_path, None, 60, "crash")
    assert crash.value.transient and crash.value.returncode == 1 and "boom" in str(crash.value)
    with pytest.raises(supervision.StageFailed) as user:
        supervision.run_logged([sys.executable, "-c", "import sys; sys.exit(2)"], tmp_path, None, 60, "bad params")
    assert not user.value.transient


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)
    t0 = time.time()
    with pytest.raises(supervision.StageFailed, match="timed out") as err:
        # 10 s: on a loaded box two interpreter start-ups can take more than 3 s, and the grandchild must exist
        supervision.run_logged([sys.executable, "-c", script], tmp_path, None, 10, "sleeper")
    assert not err.value.transient and time.time() - t0 < 90
    child = int(pidfile.read_text())
    time.sleep(0.5)
    import psutil

    # the grandchild died with its group (a zombie waiting for its new parent to reap it counts as dead)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_retry_condition_reads_the_failure_class():
    from prefect.states import Failed

    assert fp.retry_transient(None, None, Failed(data=supervision.StageFailed("x", 1, "", transient=True)))
    assert not fp.retry_transient(None, None, Failed(data=supervision.StageFailed("x", 2, "", transient=False)))
    assert fp.retry_transient(None, None, Failed(data=OSError("disk hiccup")))


def test_dvc_cache_key_is_the_lock_entry_of_an_up_to_date_stage(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run([venv_bin("dvc"), "init", "-q"], root)
    (root / "params.yaml").write_text("a: 1\n")
    (root / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python -c \"open('out.txt','w').write('x')\"\n"
                                   "    params: [a]\n    outs: [out.txt]\n")
    params = {"root": str(root), "stage": "s"}
    assert fp.dvc_cache_key(None, params) is None  # never ran: not cached
    run([venv_bin("dvc"), "repro", "-q"], root)
    key = fp.dvc_cache_key(None, params)
    assert key and key.startswith("gapo-") and key == fp.dvc_cache_key(None, params)
    (root / "params.yaml").write_text("a: 2\n")
    assert fp.dvc_cache_key(None, params) is None  # changed param: must run
    run([venv_bin("dvc"), "repro", "-q"], root)
    assert fp.dvc_cache_key(None, params) not in (None, key)
    assert fp.dvc_status(Path(root), "s") == {}


def test_state_hook_closes_the_parent_run_however_the_flow_ends(tmp_path, monkeypatch):
    """close_pipeline_run (the flow's on_completion / on_failure / on_crashed / on_cancellation hook): the MLflow parent
    run FINISHED only on completion (with the held-out metrics), FAILED otherwise, and the summary quotes the error.
    Called with the states Prefect passes; the artifacts are caught instead of sent to a Prefect API."""
    import json
    import uuid
    from types import SimpleNamespace

    import mlflow
    from prefect.states import Cancelled, Completed, Crashed, Failed

    from flows import pipeline_run as pr

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    fp.configure_params(tmp_path, None, [])
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"prompt_level_strict_acc": 0.25}))
    published = []
    monkeypatch.setattr(pr, "_publish", published.append)
    step = {"stage": "prepare", "status": "ran", "seconds": 1.0, "lock": "0123456789abcdef"}

    def begin() -> tuple[pr.PipelineRun, SimpleNamespace]:
        flow_run = SimpleNamespace(id=uuid.uuid4())
        parent = pr.open_parent_run(tmp_path, str(flow_run.id), "hook-test", None)
        run = pr.PipelineRun(tmp_path, str(flow_run.id), "hook-test", steps=1, parent=parent, results=[step])
        pr._OPEN[run.flow_run_id] = run
        return run, flow_run

    cases = [(Completed(), "FINISHED", None),
             (Failed(data=supervision.StageFailed("gapo sft", 1, "boom", transient=True)), "FAILED",
              "**FAILED**: StageFailed: gapo sft failed (exit 1): boom"),
             (Crashed(message="Execution was aborted by a termination signal."), "FAILED", "termination signal"),
             (Cancelled(message="Flow run was cancelled."), "FAILED", "**FAILED**: CancelledRun: Flow run was cancelled.")]
    client = mlflow.MlflowClient()
    for state, status, error in cases:
        published.clear()
        run, flow_run = begin()
        pr.close_pipeline_run(None, flow_run, state)
        closed = client.get_run(run.parent["run_id"])
        assert closed.info.status == status, state
        assert ("prompt_level_strict_acc" in closed.data.metrics) == (status == "FINISHED")
        summary, = [a for a in published if a.key == "gapo-summary"]
        assert str(summary.flow_run_id) == run.flow_run_id and "| prepare | ran | 1.0 | `0123456789ab` |" in summary.markdown
        assert (error in summary.markdown) if error else "FAILED" not in summary.markdown
        # a second hook for the same run (a worker's runner, in its own process) finds nothing to close
        published.clear()
        pr.close_pipeline_run(None, flow_run, state)
        assert not published

    # a flow-run process that exits without its hook (cancelled by a worker's runner) closes its run on the way out
    run, _ = begin()
    pr._close_left_open()
    assert client.get_run(run.parent["run_id"]).info.status == "FAILED" and not pr._OPEN
