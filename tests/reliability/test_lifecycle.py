"""MLflow lifecycle of a call (issue 13, item 10): a call that fails on its input creates no MLflow run (its inputs
are validated before the run is opened, gapo.preflight), and the runs a kill -9 left RUNNING are closed as KILLED
when the next stage starts in that workspace."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


# A stage process that opens its MLflow runs (gapo.tracking.runs.stage_run, as `gapo <stage>` does) and then works
# until it is killed: the state a kill -9 in the middle of a stage leaves behind, without the stage's cost.
_HOLDER = """
import sys, time
from pathlib import Path
from gapo.config import load_params
from gapo.paths import Workspace
from gapo.tracking.runs import stage_run
with stage_run("prepare", load_params(None, ["tracking.system_metrics=false"]), Workspace(Path(sys.argv[1]))):
    print("runs open", flush=True)
    time.sleep(3600)
"""


def test_runs_left_running_by_a_kill_are_marked_killed_on_the_next_start(tmp_path):
    import mlflow

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ws = tmp_path / "ws"
    ws.mkdir()
    env = _env(db)
    client = mlflow.MlflowClient(db)
    client.search_experiments()  # create the store first: two processes migrating one new sqlite file collide
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ws)], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert first.strip() == "runs open", first
        exp = client.get_experiment_by_name("lifecycle")
        running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        assert len(running) == 2, [r.data.tags.get("mlflow.runName") for r in running]  # the stage run + parent
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed = {r.info.run_id for r in running}
    # the next stage in this workspace (a small prepare through the real CLI) closes them
    rerun = subprocess.run([GAPO, "--workdir", str(ws), "prepare", "-S", "data.num_products=5", "-S",
                            "data.test_prompts=3", "-S", "data.workers=1", "-S", "tracking.system_metrics=false"],
                           cwd=ws, env=env, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", (run_id, run.info.status, json.dumps(run.data.tags)[:500])
        assert "gone" in run.data.tags.get("gapo.closed_by", "")
    assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "FINISHED", "KILLED", "KILLED"], statuses


def test_a_live_process_keeps_its_run():
    from gapo.tracking.runs import _owner_alive, _process_tags

    assert _owner_alive(_process_tags()) is True
    assert _owner_alive({**_process_tags(), "gapo.pid_started": "1.0"}) is False  # pid reused by another process
    assert _owner_alive({**_process_tags(), "gapo.host": "elsewhere"}) is None
    assert _owner_alive({"gapo.pipeline_key": "prefect:abc"}) is None
