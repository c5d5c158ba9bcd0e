"""Credentials inside a URI (`scheme://user:password@host`) are never printed or logged (issue 13, item 1), on every
path: our own `error:` / warning lines, MLflow params and tags (the `gapo.error` tag of a failed stage), and what
libraries print while a command runs (MLflow's "API request to http://user:password@... failed" warning after its
retries, log records, warnings). Each test asserts the URI is there, redacted, so it cannot pass by omission."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gapo.redaction import redact_text, redacting_output

PASSWORD = "s3cr3t-PW-13"
DOWN = f"http://gapo-user:{PASSWORD}@127.0.0.1:9/base"  # nothing listens on port 9 (discard)


@pytest.mark.parametrize("text,expected", [
    (f"API request to {DOWN}/api/2.0/x failed", "API request to http://127.0.0.1:9/base/api/2.0/x failed"),
    ("https://u:p@ss@host:5000/x and s3://AKIA:key@bucket/k", "https://host:5000/x and s3://bucket/k"),
    ("postgresql+psycopg2://mlflow:pw@db:5432/mlflow", "postgresql+psycopg2://db:5432/mlflow"),
    ("http:/u:pw@h/x.jsonl", "http:/h/x.jsonl"),  # a URI that went through pathlib
    ("mail me@example.com, see http://host/x; git@github.com:org/repo", None),
    ("file:///tmp/a@b.json", None),
])
def test_redact_text(text, expected):
    assert redact_text(text) == (text if expected is None else expected)


def test_library_output_is_redacted_while_a_command_runs(capfd):
    """A logging handler created before the command (as MLflow's is, at import), a warning and a plain print."""
    logger = logging.getLogger("gapo.test.lib")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with redacting_output():
            logger.warning("Retrying request to %s/api", DOWN)
            with warnings.catch_warnings():  # Python's default display (pytest records warnings instead)
                warnings.simplefilter("always")
                warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
                    warnings.formatwarning(m, c, f, n, line))
                warnings.warn(f"connection to {DOWN} failed", UserWarning, stacklevel=1)
            print(f"tracking at {DOWN}", file=sys.stderr)
            print(f"stdout {DOWN}")
    finally:
        logger.removeHandler(handler)
    out = capfd.readouterr()
    assert PASSWORD not in out.out + out.err
    assert out.err.count("http://127.0.0.1:9/base") >= 3 and "stdout http://127.0.0.1:9/base" in out.out


def test_mlflow_retry_warning_of_a_tracked_stage_is_redacted(tmp_path):
    """The issue's case: the tracking server is down; MLflow's warning (after its retries) and ours quote the URI."""
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {**os.environ, "GAPO_TRACKING": "on", "MLFLOW_TRACKING_URI": DOWN, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = subprocess.run([str(Path(sys.executable).parent / "gapo"), "--workdir", str(ws), "prepare", "-S",
                           "data.num_products=5", "-S", "data.test_prompts=3", "-S", "data.workers=1"],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "runs untracked" in out and "127.0.0.1:9" in out, out[-3000:]  # the warning is there, redacted
    assert PASSWORD not in out
    assert not [p for p in ws.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


def test_params_tags_and_error_line_are_redacted(tmp_path, monkeypatch, capfd):
    """`-S tracking.tracking_uri=http://user:password@...` and a path given as a URI with credentials: the error
    line of a bad input is redacted and leaves the store as it was (no run: inputs are checked before it opens,
    gapo.preflight); a stage that runs logs the URI redacted in its params and tags, and its parent's."""
    import mlflow

    from gapo import cli

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ws = tmp_path / "ws"
    ws.mkdir()
    for key, value in {"GAPO_TRACKING": "on", "MLFLOW_TRACKING_URI": db}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ws)
    common = ["-S", f"tracking.tracking_uri={DOWN}", "-S", "tracking.system_metrics=false",
              "-S", f"tracking.artifact_location={tmp_path}/art", "-S", "tracking.experiment=redaction"]
    rc = cli.main(["--workdir", str(ws), "prepare", *common,
                   "-S", f"data.user.sft=https://user:{PASSWORD}@data.example/sft.jsonl"])
    out = capfd.readouterr()
    assert rc == 2, out.err[-2000:]
    # the line quotes the path, minus its user:password@ (pathlib made `https://` into `https:/`)
    assert "error: https:/data.example/sft.jsonl: file not found (data.user.sft)" in out.err, out.err[-2000:]
    assert PASSWORD not in out.out + out.err
    client = mlflow.MlflowClient(db)
    exp = client.get_experiment_by_name("redaction")
    assert exp is None or not client.search_runs([exp.experiment_id])  # a bad input leaves no run behind
    rc = cli.main(["--workdir", str(ws), "prepare", *common, "-S", "data.num_products=6", "-S", "data.test_prompts=4",
                   "-S", "data.workers=1"])
    out = capfd.readouterr()
    assert rc == 0, out.err[-2000:]
    assert PASSWORD not in out.out + out.err
    runs = client.search_runs([client.get_experiment_by_name("redaction").experiment_id])
    assert runs, "the stage run and its parent exist"
    seen = []
    for r in runs:
        seen += list(r.data.params.values()) + list(r.data.tags.values())
        assert r.data.params.get("tracking.tracking_uri") == "http://127.0.0.1:9/base"
    assert not [v for v in seen if PASSWORD in v]


def test_error_line_and_error_tag_of_a_failed_stage_are_redacted(tmp_path, monkeypatch, capsys):
    """A stage that fails after its MLflow run opened (bad input fails before it: gapo.preflight): evaluate of a
    `models:/` policy whose registry is down. MLflow's exception quotes the registry URL with its user:password@;
    the `error:` line and the run's `gapo.error` tag quote it without."""
    import mlflow

    from gapo import cli

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key, value in {"GAPO_TRACKING": "on", "MLFLOW_TRACKING_URI": db, "MLFLOW_REGISTRY_URI": DOWN,
                       "MLFLOW_EXPERIMENT_NAME": "redaction", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), "evaluate", "--input", str(inp), "-S", "evaluate.model=models:/gapo-policy@x",
                   "-S", "tracking.system_metrics=false"])
    err = capsys.readouterr().err
    quoted = "API request to http://127.0.0.1:9/base/api/2.0/mlflow/"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and quoted in lines[0], err[-2000:]
    assert PASSWORD not in err
    client = mlflow.MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("redaction").experiment_id])
    errors = [r.data.tags["gapo.error"] for r in runs if "gapo.error" in r.data.tags]
    assert len(errors) == 1 and errors[0].startswith("ModelError: ") and quoted in errors[0], errors
    assert not [v for r in runs for v in [*r.data.params.values(), *r.data.tags.values()] if PASSWORD in v]


def test_error_line_naming_the_store_is_redacted(tmp_path, monkeypatch, capsys):
    """A registry download that fails quotes the store URI in our own ModelError line."""
    from gapo import cli

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    for key, value in {"MLFLOW_TRACKING_URI": DOWN, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), "evaluate", "--input", str(inp), "-S", "evaluate.model=models:/gapo-policy@x"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: " in err and PASSWORD not in err, err[-2000:]
    assert "127.0.0.1:9" in err
