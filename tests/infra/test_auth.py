"""Real servers with authentication on 127.0.0.1: MLflow basic auth and the Prefect API auth string.

MLflow runs through infra/mlflow/entrypoint.sh (the compose image's entrypoint) on sqlite stores in a tmp
dir; the compose file runs the same command on PostgreSQL. Prefect runs `prefect server start` with
PREFECT_SERVER_API_AUTH_STRING; clients authenticate with PREFECT_API_AUTH_STRING. Each test stays under
2 minutes with servers that take up to ~40 s to start on a loaded 2-core machine.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.infra.infra_procs import Proc, clean_env, free_port, http, wait_http_ok

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------ MLflow
@pytest.mark.skipif(importlib.util.find_spec("flask_wtf") is None,
                    reason="mlflow --app-name basic-auth needs Flask-WTF (the mlflow[auth] extra), not installed")
def test_mlflow_basic_auth_rejects_anonymous_writes(tmp_path, monkeypatch):
    admin, password = "gapo-admin", secrets.token_hex(12)   # >= 12 characters, MLflow's minimum
    port = free_port()
    env = clean_env({
        "MLFLOW_AUTH_ADMIN_USERNAME": admin,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db",
        "TMPDIR": str(tmp_path),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",   # the GenAI job runner: 7 more processes, unused
    }, home=tmp_path)
    cmd = ["sh", str(INFRA / "mlflow" / "entrypoint.sh"), "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    server = Proc("mlflow server", cmd, env, tmp_path / "mlflow.log")
    base = f"http://127.0.0.1:{port}"
    try:
        started = wait_http_ok(f"{base}/health", server)
        print(f"mlflow basic-auth server answered /health after {started:.1f} s")
        create = f"{base}/api/2.0/mlflow/experiments/create"

        status, body = http("POST", create, json.dumps({"name": "anonymous"}).encode())
        assert status == 401, body
        status, _ = http("POST", create, json.dumps({"name": "wrong"}).encode(), auth=(admin, password + "x"))
        assert status == 401
        status, body = http("POST", create, json.dumps({"name": "gapo-auth-test"}).encode(), auth=(admin, password))
        assert status == 200, body
        experiment_id = json.loads(body)["experiment_id"]
        status, body = http("GET", f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                            auth=(admin, password))
        assert status == 200 and json.loads(body)["experiment"]["name"] == "gapo-auth-test"

        # The python client authenticates from MLFLOW_TRACKING_USERNAME / _PASSWORD, as the stages do.
        import mlflow
        from mlflow.exceptions import MlflowException

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = mlflow.MlflowClient(tracking_uri=base)
        assert client.get_experiment(client.create_experiment("from-client")).name == "from-client"
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(MlflowException, match="401"):
            client.create_experiment("no-credentials")
    finally:
        server.stop()
    assert not server.alive()


def test_mlflow_entrypoint_refuses_to_start_without_admin_password(tmp_path):
    env = clean_env({"MLFLOW_AUTH_ADMIN_USERNAME": "gapo-admin", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
                     "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db"}, home=tmp_path)
    proc = subprocess.run(["sh", str(INFRA / "mlflow" / "entrypoint.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in proc.stderr


# ------------------------------------------------------------------------------------------------ Prefect
@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect")
    auth = f"gapo:{secrets.token_hex(12)}"
    port = free_port()
    env = clean_env({
        "PREFECT_HOME": str(tmp / "home"),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }, home=tmp)
    server = Proc("prefect server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  env, tmp / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    try:
        started = wait_http_ok(f"{url}/health", server)
        print(f"prefect server answered /api/health after {started:.1f} s")
        yield {"url": url, "auth": auth, "tmp": tmp, "server": server}
    finally:
        server.stop()


def _client_settings(srv):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: srv["url"], PREFECT_API_AUTH_STRING: srv["auth"]})


def test_prefect_server_requires_the_auth_string(prefect_server):
    url, auth = prefect_server["url"], prefect_server["auth"]
    user, pw = auth.split(":", 1)
    status, body = http("POST", f"{url}/flows/filter", b"{}")
    assert status == 401, body
    assert http("POST", f"{url}/flows/filter", b"{}", auth=(user, pw + "x"))[0] == 401
    status, body = http("POST", f"{url}/flows/filter", b"{}", auth=(user, pw))
    assert status == 200 and json.loads(body) == []
    status, _ = http("POST", f"{url}/work_pools/", json.dumps({"name": "anon", "type": "process"}).encode())
    assert status == 401
    # health probes (compose healthcheck, k8s) stay open
    assert http("GET", f"{url}/health")[0] == 200

    from prefect.client.orchestration import get_client

    with _client_settings(prefect_server):
        with get_client(sync_client=True) as client:
            assert client.read_flows() == []


def test_bootstrap_pools_secrets_and_a_worker_with_the_auth_string(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.workers.base import BaseJobConfiguration

    bootstrap = _load("gapo_infra_bootstrap", INFRA / "prefect" / "bootstrap.py")
    fake = {"MLFLOW_TRACKING_USERNAME": "gapo-admin", "MLFLOW_TRACKING_PASSWORD": "pw-" + secrets.token_hex(6),
            "AWS_ACCESS_KEY_ID": "gapo-s3", "AWS_SECRET_ACCESS_KEY": "s3-" + secrets.token_hex(6)}
    with _client_settings(prefect_server):
        with get_client(sync_client=True) as client:
            created = bootstrap.ensure_pools(client)
            assert created == ["created gapo-compose (process)", "created gapo-docker (docker)",
                               "created gapo-k8s (kubernetes)"]
            assert [x.split()[0] for x in bootstrap.ensure_pools(client)] == ["updated"] * 3   # idempotent
            k8s = client.read_work_pool("gapo-k8s")
            docker = client.read_work_pool("gapo-docker")
        assert bootstrap.ensure_secrets(fake) == [f"saved {b}" for b in bootstrap.SECRETS]

        # What the docker worker does at run time: template + deployment variables, secret blocks resolved.
        async def resolve(template, values):
            async with get_client() as aclient:
                return await BaseJobConfiguration.from_template_and_values(template, values, client=aclient)

        cfg = asyncio.run(resolve(docker.base_job_template, {"env": {"EXTRA": "1"}}))
        assert cfg.env["MLFLOW_TRACKING_PASSWORD"] == fake["MLFLOW_TRACKING_PASSWORD"]
        assert cfg.env["AWS_SECRET_ACCESS_KEY"] == fake["AWS_SECRET_ACCESS_KEY"]
        assert cfg.env["EXTRA"] == "1" and cfg.env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # merged
        k8s_vars = k8s.base_job_template["variables"]["properties"]
        assert k8s_vars["gpu_count"]["default"] == 1 and k8s_vars["shared_pvc"]["default"] == "gapo-shared"

    # A process worker authenticates with PREFECT_API_AUTH_STRING and registers with the pool.
    tmp = prefect_server["tmp"]
    env = clean_env({"PREFECT_API_URL": prefect_server["url"], "PREFECT_API_AUTH_STRING": prefect_server["auth"],
                     "PREFECT_HOME": str(tmp / "worker-home")}, home=tmp)
    worker = Proc("prefect worker", ["prefect", "worker", "start", "--pool", "gapo-compose", "--type", "process",
                                     "--name", "auth-test-worker"], env, tmp / "worker.log")
    try:
        deadline = time.monotonic() + 75
        names: list[str] = []
        with _client_settings(prefect_server):
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline and "auth-test-worker" not in names:
                    assert worker.alive(), worker.tail()
                    names = [w.name for w in client.read_workers_for_work_pool("gapo-compose")]
                    time.sleep(1)
        assert "auth-test-worker" in names, worker.tail()
        print(f"worker registered {time.monotonic() - worker.started:.1f} s after start")
    finally:
        worker.stop(first_signal=signal.SIGINT)   # before the server (stack-notes §4)
    assert not worker.alive()


def test_deployment_stanzas_register_on_the_pools(prefect_server, tmp_path):
    """`prefect deploy --all` of infra/prefect-deployments.yaml against the pools, with a stand-in flow."""
    from prefect.client.orchestration import get_client

    bootstrap = _load("gapo_infra_bootstrap", INFRA / "prefect" / "bootstrap.py")
    with _client_settings(prefect_server):
        with get_client(sync_client=True) as client:
            bootstrap.ensure_pools(client)
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    real_flow = REPO / "flows" / "gapo_pipeline.py"
    if real_flow.exists():   # the parameters of the stanzas must match the real signature
        shutil.copy(real_flow, project / "flows" / "gapo_pipeline.py")
    else:
        (project / "flows" / "gapo_pipeline.py").write_text(
            "from prefect import flow\n\n\n@flow(name='gapo-pipeline')\n"
            "def gapo_pipeline(profile: str | None = None, dvc_pull: bool = False, dvc_push: bool = False) -> None:\n"
            "    pass\n")
    stanzas = yaml.safe_load((INFRA / "prefect-deployments.yaml").read_text())
    prefect_yaml = {"name": "gapo-pipeline", "prefect-version": "3.9.1", "build": None, "push": None,
                    "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
                    "deployments": stanzas["deployments"]}
    (project / "prefect.yaml").write_text(yaml.safe_dump(prefect_yaml, sort_keys=False))
    env = clean_env({"PREFECT_API_URL": prefect_server["url"], "PREFECT_API_AUTH_STRING": prefect_server["auth"],
                     "PREFECT_HOME": str(tmp_path / "home")}, home=tmp_path)
    proc = subprocess.run(["prefect", "--no-prompt", "deploy", "--all"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with _client_settings(prefect_server):
        with get_client(sync_client=True) as client:
            deps = {d.name: d for d in client.read_deployments()}
    assert set(deps) >= {"compose", "docker", "kubernetes"}
    assert deps["kubernetes"].work_pool_name == "gapo-k8s"
    assert deps["kubernetes"].job_variables["gpu_count"] == 8
    assert deps["docker"].work_pool_name == "gapo-docker"
    assert deps["compose"].pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/gapo"
    assert all(d.entrypoint == "flows/gapo_pipeline.py:gapo_pipeline" for d in deps.values())
    assert deps["kubernetes"].parameters == {"dvc_pull": True, "dvc_push": True}
