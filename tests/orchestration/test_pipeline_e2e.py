"""End to end on the tiny profile, in a throw-away copy of the repo (never in the checkout): the three entry points
(`dvc repro`, the Prefect flow and its deployment on a real local server, `mlflow models serve`) against one
pipeline workspace. The tests run in file order and build on each other's state (marked slow).

Measured on the shared 2-core box (load 8-11), two runs: first `dvc repro` 278-390 s; serving both champions
31-43 s; a Prefect run with nothing to do 61-92 s; a PPO knob change 139-171 s; `dvc exp run -S
adversarial.rounds=0` 96-114 s; the deployment test (server start, pools, worker, deploy, a run that re-evaluates
and re-registers) 154-233 s; the module 13.5-17.5 min.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.supervision import kill_group
from tests.orchestration.fast_pipeline import FAST_PIPELINE as FAST
from tests.repo_copies import make_repo_copy, run, tracked_env, venv_bin

pytestmark = pytest.mark.slow

STAGES = ["prepare", "models", "sft", "rm_warmup", "adversarial", "evaluate", "register"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A tiny-profile copy of the repo after one full `dvc repro`. GAPO_E2E_REPO=<dir> reuses such a copy
    (made by an earlier run of this module) when iterating on one test."""
    if os.environ.get("GAPO_E2E_REPO"):
        return Path(os.environ["GAPO_E2E_REPO"])
    root = make_repo_copy(tmp_path_factory.mktemp("e2e") / "repo", "tiny", FAST)
    t0 = time.time()
    proc = run([venv_bin("dvc"), "repro"], root, timeout=3600)
    (root / "repro-1.log").write_text(proc.stdout + proc.stderr)
    print(f"first dvc repro: {time.time() - t0:.0f} s")
    return root


def _client(root: Path):
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(uri, uri)


def _dvc_status(root: Path) -> dict:
    return json.loads(run([venv_bin("dvc"), "status", "--json"], root).stdout or "{}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: server exited {proc.returncode}\n{log.read_text()[-4000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url}: not up after {timeout} s\n{log.read_text()[-4000:] if log else ''}")


def test_dvc_repro_registers_both_models_with_aliases(repo):
    assert _dvc_status(repo) == {}
    client = _client(repo)
    for name in ("gapo-policy", "gapo-reward-model"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"
    register = json.loads((repo / "metrics" / "register.json").read_text())
    assert register["promoted"] is True
    # the model card: README.md in each version, the same text as its description, with the paired SFT table
    # from metrics/evaluate.json and the DVC hashes from dvc.lock
    import mlflow

    lock = (repo / "dvc.lock").read_text()
    for name in ("gapo-policy", "gapo-reward-model"):
        readme = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{client.get_model_version_download_uri(name, '1')}/README.md",
            dst_path=str(repo / "cards" / name))).read_text(encoding="utf-8")
        assert client.get_model_version(name, "1").description == readme
        assert readme.startswith(f"# {name} version 1\n") and "- Base: `builtin:" in readme
        assert "| prompt-level strict |" in readme and "p (McNemar)" in readme and "n = 6 prompts" in readme
        outs = [line.split("`")[3] for line in readme.splitlines() if line.startswith("| `checkpoints/final` |")]
        assert outs and outs[0] in lock


def test_mlflow_nests_stage_and_round_runs_under_one_parent(repo):
    client = _client(repo)
    exp = client.get_experiment_by_name("gapo")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`gapo.role` = 'pipeline'")
    assert len(parents) == 1 and parents[0].data.tags["gapo.trigger"] == "dvc"
    parent = parents[0]
    kids = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["gapo.stage"]: r for r in kids}
    assert set(by_stage) == set(STAGES) and all(r.info.status == "FINISHED" for r in kids)
    sft = by_stage["sft"]
    assert client.get_metric_history(sft.info.run_id, "sft_loss/loss"), "SFT loss curve as step metrics"
    assert sft.data.tags["dvc.lock.self"] and sft.data.tags["git.commit"]
    assert any(k.startswith("system/") for k in by_stage["adversarial"].data.metrics), "system metrics"
    rounds = client.search_runs([exp.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{by_stage['adversarial'].info.run_id}'")
    assert {r.info.run_name for r in rounds} >= {"round-001", "round-002"}
    assert all("hack_gap" in r.data.metrics for r in rounds)
    assert by_stage["evaluate"].data.metrics["prompt_level_strict_acc"] >= 0


def test_lineage_command_prints_the_chain(repo):
    out = run([venv_bin("gapo"), "lineage", "models:/gapo-policy@champion"], repo).stdout
    assert "gapo-policy version 1" in out and "trigger dvc" in out
    assert "data/ifeval" in out and "checkpoints/final" in out and "checkpoints/sft" in out
    report = json.loads(run([venv_bin("gapo"), "lineage", "--json", "models:/gapo-reward-model@champion"],
                            repo).stdout)
    lock = (repo / "dvc.lock").read_text()
    assert report["dvc"]["outs"]["checkpoints/final"] in lock
    assert set(report["dvc"]["stages"]) >= set(STAGES[:-1])


def test_dvc_plots_show_renders_round_curves(repo):
    run([venv_bin("dvc"), "plots", "show", "-o", "dvc_plots"], repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    for title in ("Reward model (discriminator) on fresh policy samples", "Verifier pass rate and hack_gap",
                  "Policy (generator) per round", "Warm-up SFT loss", "Reward-model warm-up loss"):
        assert title in html, title
    assert "hack_gap" in html and "rm_auc" in html and "verifier_pass_rate" in html


def test_mlflow_models_serve_champion_answers(repo):
    port, rm_port = _free_port(), _free_port()
    env = tracked_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    logs = {}
    procs = []
    try:
        for model, p in (("models:/gapo-policy@champion", port), ("models:/gapo-reward-model@champion", rm_port)):
            log = repo / f"serve-{p}.log"
            logs[p] = log
            procs.append(subprocess.Popen(
                [venv_bin("mlflow"), "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1",
                 "-p", str(p)], cwd=repo, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        for p, proc in zip((port, rm_port), procs):
            _wait_http(f"http://127.0.0.1:{p}/ping", 300, proc, logs[p])
        prompt = ("Product: a blue ceramic coffee mug, 350 ml, dishwasher safe.\nWrite a product description.\n"
                  "Requirements:\nYour response should contain at least 3 sentences.")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"inputs": [prompt], "params": {"max_new_tokens": 8}}).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            body = json.loads(r.read())
        assert r.status == 200 and isinstance(body["predictions"][0], str)
        req = urllib.request.Request(f"http://127.0.0.1:{rm_port}/invocations", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"dataframe_records": [
                                         {"prompt": prompt, "response": "A sturdy blue mug. It holds 350 ml. "
                                                                        "It is dishwasher safe."}]}).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            scores = json.loads(r.read())["predictions"]
        # `score` is what PPO received (params.reward.score: the logit by default), `logit` the raw head output
        assert math.isfinite(scores[0]["score"]) and scores[0]["score"] == pytest.approx(scores[0]["logit"])
    finally:
        for proc in procs:
            kill_group(proc, grace_s=20)  # uvicorn's workers are in its group


def test_prefect_run_after_up_to_date_repro_retrains_nothing(repo):
    assert _dvc_status(repo) == {}
    lock_before = (repo / "dvc.lock").read_text()
    marker = time.time()
    out = run([sys.executable, "flows/gapo_pipeline.py"], repo, timeout=1800).stdout
    summary = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert [r["status"] for r in summary["results"]] == ["skipped"] * len(STAGES)
    assert (repo / "dvc.lock").read_text() == lock_before
    touched = [p for p in (repo / "checkpoints").rglob("*") if p.is_file() and p.stat().st_mtime > marker]
    assert not touched, touched[:5]


def test_ppo_param_change_reruns_only_rounds_and_later(repo):
    run([venv_bin("gapo"), "config", "-S", "ppo.init_kl_coef=0.02", "--write", "params.yaml"], repo)
    assert set(_dvc_status(repo)) == {"adversarial"}
    proc = run([venv_bin("dvc"), "repro"], repo, timeout=3600)
    log = proc.stdout + proc.stderr
    (repo / "repro-ppo.log").write_text(log)
    for stage in ("prepare", "models", "sft", "rm_warmup"):
        assert f"Stage '{stage}' didn't change, skipping" in log
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    assert ran == ["adversarial", "evaluate", "register"]
    assert _dvc_status(repo) == {}


def test_worse_setting_gets_candidate_not_champion(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "after ppo change"], repo)
    run([venv_bin("dvc"), "exp", "run", "-S", "adversarial.rounds=0", "-n", "no-rounds"], repo, timeout=3600)
    register = json.loads((repo / "metrics" / "register.json").read_text())
    assert register["promoted"] is False
    client = _client(repo)
    candidate = client.get_model_version_by_alias("gapo-policy", "candidate")
    champion = client.get_model_version_by_alias("gapo-policy", "champion")
    assert str(candidate.version) == str(register["policy_version"]) and str(champion.version) == "1"
    assert str(client.get_model_version_by_alias("gapo-reward-model", "champion").version) == "1"
    assert candidate.tags["gate.verdict"] == "rejected" and "champion v1" in candidate.tags["gate.reasons"]
    assert candidate.tags.get("dvc.exp_name") == "no-rounds"


def test_prefect_deployment_on_a_local_server(repo, tmp_path):
    """prefect server start + worker --pool local + prefect deploy --all + prefect deployment run, on loopback."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = tracked_env(repo, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, PWD=str(repo),
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true")
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = subprocess.Popen([venv_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=open(server_log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = None
    try:
        _wait_http(f"{api}/health", 300, server, server_log)
        run([sys.executable, "infra/prefect/bootstrap.py", "--pools-only"], repo, env)  # the container pools
        worker = subprocess.Popen([venv_bin("prefect"), "worker", "start", "--pool", "local", "--type", "process"],
                                  cwd=repo, env=env, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.time() + 180
        while subprocess.run([venv_bin("prefect"), "work-pool", "inspect", "local"], cwd=repo, env=env,
                             capture_output=True).returncode != 0:
            assert time.time() < deadline and worker.poll() is None, worker_log.read_text()[-3000:]
            time.sleep(2)
        out = run([venv_bin("prefect"), "--no-prompt", "deploy", "--all"], repo, env).stdout
        assert "gapo-pipeline/local" in out
        out = run([venv_bin("prefect"), "deployment", "run", "gapo-pipeline/local", "--param",
                   'overrides=["evaluate.max_prompts=4"]'], repo, env).stdout
        flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
        state = None
        deadline = time.time() + 2400
        while time.time() < deadline:
            probe = run([sys.executable, "-c", (
                "import sys; from prefect.client.orchestration import get_client\n"
                "with get_client(sync_client=True) as c: print(c.read_flow_run(sys.argv[1]).state.type.value)"),
                flow_run_id], repo, env)
            state = probe.stdout.strip().splitlines()[-1]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(5)
        assert state == "COMPLETED", f"flow run {flow_run_id}: {state}\n{worker_log.read_text()[-6000:]}"
        # the deployment's parameters reached params.yaml, only evaluate and register reran, DVC is in sync
        assert "max_prompts: 4" in (repo / "params.yaml").read_text()
        assert _dvc_status(repo) == {}
        assert json.loads((repo / "metrics" / "evaluate.json").read_text())["num_prompts"] == 4
        client = _client(repo)
        exp = client.get_experiment_by_name("gapo")
        parent, = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`gapo.role` = 'pipeline'"))
        stages = client.search_runs([exp.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert {r.data.tags["gapo.stage"] for r in stages} == {"evaluate", "register"}
        assert all(r.data.tags["prefect.flow_run_id"] == flow_run_id for r in stages)
    finally:
        if worker is not None:
            kill_group(worker, signal.SIGINT, grace_s=20)  # the worker first: an orphaned worker ignores SIGTERM
        kill_group(server, grace_s=20)
