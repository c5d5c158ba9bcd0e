"""MLflow lifecycle of a call (issue 13, item 10): a call that fails on its input creates no MLflow run (its inputs
are validated before the run is opened, gapo.preflight), and the runs a kill -9 left RUNNING are closed as KILLED
when the next stage starts in that workspace."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.rel_helpers import kill9

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


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes (the .gapo/ lock folder aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != ".gapo"}


def _jsonl(path: Path, *rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _policy_base(ws: Path, models) -> None:
    shutil.copytree(models[0], ws / "models" / "policy")


def _sft_truncated(ws: Path, models) -> None:
    _policy_base(ws, models)
    (ws / "data" / "sft").mkdir(parents=True)
    (ws / "data" / "sft" / "train.jsonl").write_text('{"prompt": "Describe a mug.", "completion": "A sturdy')


def _rm_bad_label(ws: Path, models) -> None:
    shutil.copytree(models[1], ws / "models" / "reward")
    _jsonl(ws / "data" / "rm" / "train.jsonl", {"prompt": "p", "response": "r", "label": 2})


def _warmed_up(ws: Path, models) -> None:
    """What the adversarial stage reads, with no round done yet."""
    shutil.copytree(models[0], ws / "checkpoints" / "sft")
    shutil.copytree(models[1], ws / "checkpoints" / "rm_warmup")
    _jsonl(ws / "data" / "ifeval" / "train.jsonl", {"key": 1, "prompt": "p", "instruction_id_list": [], "kwargs": []})
    _jsonl(ws / "data" / "rm" / "train.jsonl", {"prompt": "p", "response": "r", "label": 1})


def _final_models_bad_metrics(ws: Path, models) -> None:
    shutil.copytree(models[0], ws / "checkpoints" / "final" / "policy")
    shutil.copytree(models[1], ws / "checkpoints" / "final" / "reward")
    (ws / "metrics").mkdir()
    (ws / "metrics" / "evaluate.json").write_text('{"prompt_level_strict_acc": 0.')


# (argv after --workdir, workspace setup, part of the error line). Every stage that gapo.preflight did not cover
# before: sft, rm_warmup, adversarial (GAPO rounds and a baseline), register.
STAGE_INPUTS = {
    "sft-before-prepare": (["sft"], None, "data/sft/train.jsonl: not found (run `gapo prepare` first)"),
    "sft-truncated-data": (["sft"], _sft_truncated, "data/sft/train.jsonl line 1: invalid JSON"),
    "rm_warmup-before-prepare": (["rm_warmup"], None, "data/rm/train.jsonl: not found (run `gapo prepare` first)"),
    "rm_warmup-bad-label": (["rm_warmup", "-S", "reward.eval_examples=0"], _rm_bad_label,
                            "data/rm/train.jsonl line 1: field 'label' must be 0 or 1, got 2"),
    "adversarial-before-sft": (["adversarial"], None, "checkpoints/sft: not found (run `gapo prepare`, `gapo sft`"),
    "adversarial-round-out-of-range": (["adversarial", "--round", "9", "-S", "adversarial.rounds=2"], None,
                                       "adversarial --round 9: expected 1..2 (adversarial.rounds = 2)"),
    "adversarial-round-out-of-order": (["adversarial", "--round", "2", "-S", "adversarial.rounds=2"], _warmed_up,
                                       "adversarial --round 2: round 1 is not complete yet; run rounds in order"),
    "baseline-with-a-round": (["adversarial", "--round", "1", "-S", "method=dpo"], None,
                              "adversarial --round 1: method dpo has no rounds"),
    "baseline-before-sft": (["adversarial", "-S", "method=dpo"], None, "checkpoints/sft: not found (run `gapo sft`"),
    "register-before-adversarial": (["register"], None, "checkpoints/final/policy is not a saved HF model dir"),
    "register-broken-metrics": (["register"], _final_models_bad_metrics,
                                "metrics/evaluate.json: not valid JSON (JSONDecodeError); rerun `gapo evaluate`"),
}


@pytest.mark.parametrize("case", list(STAGE_INPUTS))
def test_every_stage_checks_its_inputs_before_the_run_opens(case, tmp_path, monkeypatch, capsys, tiny_model_dirs):
    """The same call with tracking off (the stage's own check) and on (gapo.preflight, before any MLflow run): the
    same one `error:` line and exit 2, no MLflow store created, the workspace byte-for-byte as before."""
    from gapo import cli

    argv, setup, expected = STAGE_INPUTS[case]
    ws = tmp_path / "ws"
    ws.mkdir()
    if setup is not None:
        setup(ws, tiny_model_dirs)
    before = _tree(ws)
    db = tmp_path / "mlflow.db"
    for k, v in _env(f"sqlite:///{db}").items():
        monkeypatch.setenv(k, v)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # a stage sets them in-process:
        had = k in os.environ                                                       # restored after the test
        monkeypatch.setenv(k, os.environ.get(k, ""))
        if not had:
            monkeypatch.delenv(k)
    monkeypatch.chdir(ws)
    lines = {}
    for tracking in ("off", "on"):
        monkeypatch.setenv("GAPO_TRACKING", tracking)
        rc = cli.main(["--workdir", str(ws), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("error: ") == 1, (tracking, err[-2000:])
        lines[tracking] = next(line for line in err.splitlines() if line.startswith("error: "))
    assert expected in lines["off"], lines["off"]
    assert lines["on"] == lines["off"]
    assert not db.exists(), "an MLflow store was created (and FAILED runs written) for a call rejected on input"
    assert _tree(ws) == before


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
        kill9(proc)
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
