"""MLflow lifecycle of a call (issue 13, item 10): a call that fails on its input creates no MLflow run (its inputs
are validated before the run is opened, gapo.preflight), and the runs a kill -9 left RUNNING are closed as KILLED
when the next stage starts in that workspace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GAPO = str(Path(sys.executable).parent / "gapo")


def _env(db: str, **extra) -> dict:
    return {**os.environ, "GAPO_TRACKING": "on", "MLFLOW_TRACKING_URI": db, "MLFLOW_EXPERIMENT_NAME": "lifecycle",
            **extra}


@pytest.mark.parametrize("argv", [
    ["prepare", "-S", "data.user.ifeval={bad}"],
    ["models", "-S", "models.policy={inp}/missing"],
    ["evaluate", "--input", "{bad}", "--responses", "{bad}"],
], ids=["prepare-bad-data", "models-missing-path", "evaluate-bad-input"])
def test_a_call_failing_on_its_input_creates_no_run(argv, tmp_path, monkeypatch, capsys):
    from gapo import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": 3}\n')
    db = tmp_path / "mlflow.db"
    ws = tmp_path / "ws"
    ws.mkdir()
    for k, v in _env(f"sqlite:///{db}").items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), *[a.format(bad=bad, inp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error: ") == 1, err[-2000:]
    assert not db.exists(), "an MLflow store was created (and FAILED runs written) for a call rejected on input"
    assert [p.name for p in ws.iterdir() if p.name != ".gapo"] == []


def test_runs_left_running_by_a_kill_are_marked_killed_on_the_next_start(tmp_path):
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ws = tmp_path / "ws"
    ws.mkdir()
    env = _env(db)
    client = mlflow.MlflowClient(db)
    client.search_experiments()  # create the store first: two processes migrating one new sqlite file collide
    log = open(tmp_path / "killed.log", "wb")
    # a prepare big enough to be killed mid-stage (its MLflow runs are open by then)
    proc = subprocess.Popen([GAPO, "--workdir", str(ws), "prepare", "-S", "data.num_products=3000", "-S",
                             "data.workers=1", "-S", "tracking.system_metrics=false"], cwd=ws, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    running = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            exp = client.get_experiment_by_name("lifecycle")
            running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'") \
                if exp else []
        except Exception:  # noqa: BLE001 - the store is being created by the stage
            running = []
        if len(running) >= 2:  # the stage run and its parent
            break
    assert proc.poll() is None and len(running) >= 2, (tmp_path / "killed.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = {r.info.run_id for r in running}
    # the rerun (a small prepare in the same workspace) closes them
    rerun = subprocess.run([GAPO, "--workdir", str(ws), "prepare", "-S", "data.num_products=5", "-S",
                            "data.test_prompts=3", "-S", "data.workers=1", "-S", "tracking.system_metrics=false"],
                           cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", (run_id, run.info.status, json.dumps(run.data.tags)[:500])
        assert "gone" in run.data.tags.get("gapo.closed_by", "")
    exp = client.get_experiment_by_name("lifecycle")
    assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_a_live_process_keeps_its_run():
    from gapo.tracking.runs import _owner_alive, _process_tags

    assert _owner_alive(_process_tags()) is True
    assert _owner_alive({**_process_tags(), "gapo.pid_started": "1.0"}) is False  # pid reused by another process
    assert _owner_alive({**_process_tags(), "gapo.host": "elsewhere"}) is None
    assert _owner_alive({"gapo.pipeline_key": "prefect:abc"}) is None
