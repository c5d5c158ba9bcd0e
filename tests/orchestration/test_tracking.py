"""gapo.tracking.runs: nested stage/round runs under one parent, params, step metrics, lineage tags, failures.

The stages here are small stand-ins that write the files a real stage writes (metrics/<stage>.json, plots/*.csv);
MLflow itself is real (a sqlite store per test)."""
from __future__ import annotations

import json
import subprocess

import pytest

from gapo.config import load_params
from gapo.io import write_json
from gapo.paths import Workspace
from gapo.tracking import backend, runs


@pytest.fixture(autouse=True)
def _no_input_checks(monkeypatch):
    """The stand-ins read nothing, so the real stages' input checks before the run opens (gapo.preflight, tested in
    tests/reliability/test_lifecycle.py) would reject these empty workspaces first; this file tests the runs."""
    monkeypatch.setattr("gapo.preflight.PREFLIGHT", {})


def _sft_like(params, ws):
    write_json(ws.metrics_file("sft"), {"train_loss_final": 1.5, "steps": 3, "nested": {"x": 2}, "name": "s"})
    ws.plots.mkdir(parents=True, exist_ok=True)
    (ws.plots / "sft_loss.csv").write_text("step,loss,lr\n1,3.0,0.001\n2,2.0,0.001\n3,1.5,0.0005\n")
    return {"checkpoint": "checkpoints/sft"}


def _adversarial_like(params, ws, round=None):  # noqa: A002 - the CLI's --round
    write_json(ws.metrics_file("adversarial"), {"hack_gap": 0.1, "rounds": 2})
    ws.plots.mkdir(parents=True, exist_ok=True)
    (ws.plots / "adversarial.csv").write_text(
        "round,rm_acc_fakes,rm_auc,fool_rate,mean_reward,kl,entropy,verifier_pass_rate,hack_gap\n"
        "1,0.7,0.8,0.3,0.4,0.01,2.0,0.3,0.1\n2,0.6,0.7,0.4,0.5,0.02,1.9,0.35,0.15\n")
    return {"rounds": 2}


def _dvc_yaml(ws: Workspace) -> None:
    (ws.root / "dvc.yaml").write_text(
        "stages:\n  sft:\n    cmd: gapo sft\n    metrics: [metrics/sft.json]\n"
        "    plots: [plots/sft_loss.csv]\n"
        "  adversarial:\n    cmd: gapo adversarial\n    metrics: [metrics/adversarial.json]\n"
        "    plots: [plots/adversarial.csv]\n")


def _children(client, exp_id, parent_id):
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_flatten_and_numeric_metrics():
    assert runs.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    got = runs.numeric_metrics({"acc": 0.5, "ok": True, "name": "x", "by": {"detectable_format:title": 1},
                                "nan": float("nan"), "none": None})
    assert got == {"acc": 0.5, "ok": 1.0, "by.detectable_format_title": 1.0}


def test_home_root_and_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = load_params(None)
    exp_ws = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert backend.home_root(exp_ws) == (tmp_path / "repo").resolve()
    assert backend.tracking_uri(params, exp_ws) == f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    assert backend.tracking_uri(params, exp_ws) == "http://127.0.0.1:5055"
    assert backend.redact("https://alice:s3cret@mlflow.example:8443/x") == "https://mlflow.example:8443/x"


def test_stage_and_round_runs_nest_under_one_parent(tmp_path, mlflow_store, monkeypatch):
    import mlflow

    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    _dvc_yaml(ws)
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True)
    monkeypatch.setenv("GAPO_PIPELINE_KEY", "test-pipeline-1")
    monkeypatch.setenv("GAPO_PREFECT_FLOW_RUN_ID", "flow-run-123")
    params = load_params(None, ["tracking.system_metrics=false"])
    out = runs.tracked("sft")(_sft_like)(params, ws)
    assert out == {"checkpoint": "checkpoints/sft"}
    runs.tracked("adversarial")(_adversarial_like)(params, ws)

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("gapo")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`gapo.role` = 'pipeline'")
    assert len(parents) == 1, "both stages of one pipeline key share one parent run"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ppo.init_kl_coef"] == str(params.ppo.init_kl_coef)
    stages = {r.data.tags["gapo.stage"]: r for r in _children(client, exp.experiment_id, parent.info.run_id)}
    assert set(stages) == {"sft", "adversarial"}
    sft = stages["sft"]
    assert sft.info.status == "FINISHED" and sft.info.run_name == "sft"
    assert sft.data.tags["prefect.flow_run_id"] == "flow-run-123"
    assert sft.data.params["sft.optim.learning_rate"] == str(params.sft.optim.learning_rate)
    assert sft.data.metrics["train_loss_final"] == 1.5 and sft.data.metrics["nested.x"] == 2.0
    history = client.get_metric_history(sft.info.run_id, "sft_loss/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    arts = {a.path for a in client.list_artifacts(sft.info.run_id, "metrics")}
    assert "metrics/sft.json" in arts

    adv = stages["adversarial"]
    assert [m.value for m in sorted(client.get_metric_history(adv.info.run_id, "adversarial/rm_auc"),
                                    key=lambda m: m.step)] == [0.8, 0.7]
    rounds = sorted(_children(client, exp.experiment_id, adv.info.run_id), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in rounds] == ["round-001", "round-002"]
    assert rounds[1].data.metrics["hack_gap"] == 0.15 and rounds[1].data.tags["gapo.round"] == "2"


def test_round_task_run_logs_only_its_round(tmp_path, mlflow_store, monkeypatch):
    import mlflow

    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    _dvc_yaml(ws)
    monkeypatch.setenv("GAPO_PIPELINE_KEY", "test-pipeline-rounds")
    params = load_params(None, ["tracking.system_metrics=false"])
    runs.tracked("adversarial")(_adversarial_like)(params, ws, round=2)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("gapo")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`gapo.stage` = 'adversarial'")[0]
    assert run.info.run_name == "adversarial-round-002" and run.data.tags["gapo.round"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "adversarial/rm_auc")] == [(2, 0.7)]
    assert not _children(client, exp.experiment_id, run.info.run_id)


def test_failed_stage_marks_runs_failed_and_propagates(tmp_path, mlflow_store, monkeypatch):
    import mlflow

    from gapo.errors import DataError

    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    monkeypatch.setenv("GAPO_PIPELINE_KEY", "test-pipeline-fail")
    params = load_params(None, ["tracking.system_metrics=false"])
    def broken(params, ws):
        raise DataError("data/sft/train.jsonl line 3: field 'prompt' missing")

    with pytest.raises(DataError, match="line 3"):
        runs.tracked("sft")(broken)(params, ws)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("gapo")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`gapo.stage` = 'sft'")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["gapo.error"].startswith("DataError: data/sft/train.jsonl line 3")
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    assert mlflow.active_run() is None


def test_tracking_failure_never_fails_the_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GAPO_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    ws = Workspace(tmp_path)
    out = runs.tracked("sft")(_sft_like)(load_params(None), ws)
    assert out == {"checkpoint": "checkpoints/sft"}
    assert "runs untracked" in capsys.readouterr().err


def test_tracking_off_imports_no_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPO_TRACKING", "off")
    ws = Workspace(tmp_path)
    assert runs.tracked("sft")(_sft_like)(load_params(None), ws) == {"checkpoint": "checkpoints/sft"}
    assert not (tmp_path / "mlflow.db").exists()


def test_stage_files_follow_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: x\n    metrics:\n      - data/stats.json:\n          cache: false\n"
        "      - metrics/prepare.json\n    plots:\n      - plots/a.csv:\n          x: step\n      - reports/a.png\n")
    assert runs.stage_files(tmp_path, "prepare") == (["data/stats.json", "metrics/prepare.json"],
                                                     ["plots/a.csv", "reports/a.png"])
    assert runs.stage_files(tmp_path, "other") == (["metrics/other.json"], [])
    assert json.loads(json.dumps(runs.flat_params(load_params(None))))["registry.gate.kl_budget"] == "1.0"


# ---------------------------------------------------------------------------------------------- a new SQLite store
_INIT_STORE = ("import sys; from gapo.tracking.backend import ensure_sqlite_store; "
               "ensure_sqlite_store('sqlite:///' + sys.argv[1])")


def _usable_store(path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    exp = client.create_experiment("probe")
    client.create_registered_model("probe-model")
    return exp


def test_ensure_sqlite_store_creates_a_whole_store(tmp_path):
    import stat

    from gapo.tracking.backend import ensure_sqlite_store

    db = tmp_path / "sub" / "mlflow.db"
    ensure_sqlite_store(f"sqlite:///{db}")
    assert db.is_file() and _usable_store(db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]  # no temp sibling left
    assert stat.S_IMODE(db.stat().st_mode) == 0o666 & ~_umask()
    mtime = db.stat().st_mtime_ns
    ensure_sqlite_store(f"sqlite:///{db}")  # an existing store is left alone
    assert db.stat().st_mtime_ns == mtime
    ensure_sqlite_store("http://127.0.0.1:5000")  # not a local store: nothing to do


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_kill_during_store_creation_never_leaves_a_half_migrated_store(tmp_path):
    """SIGKILL at several points of the ~50 migrations (kill schedule point 97 broke the store for good: the
    rerun failed on `duplicate column name: run_link`). Each time the store is either absent or whole, and the next
    process creates it."""
    import subprocess
    import sys
    import time

    db = tmp_path / "mlflow.db"
    for delay in (1.5, 2.5, 3.5, 4.5):  # the migrations take ~4 s here; unfixed, a kill at 3.5 s broke the store
        proc = subprocess.Popen([sys.executable, "-c", _INIT_STORE, str(db)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if db.exists():
            assert _usable_store(db)
            break
    subprocess.run([sys.executable, "-c", _INIT_STORE, str(db)], check=True, capture_output=True)
    assert db.exists()
    import mlflow

    assert mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # no migration error
