"""Static checks of infra/: compose bindings and secrets, work-pool templates rendered the way the workers
render them, deployment stanzas, DeepSpeed examples, and the container pull step on a scratch DVC repo."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
SECRET_WORDS = ("PASSWORD", "SECRET", "AUTH_STRING", "SECRET_KEY")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    out = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# ------------------------------------------------------------------------------------------------ compose
def test_published_ports_bind_to_the_bind_address_default_localhost():
    services = _compose()["services"]
    published = [(name, p) for name, svc in services.items() for p in svc.get("ports", [])]
    assert {n for n, _ in published} == {"postgres", "minio", "mlflow", "prefect-server"}
    for name, port in published:
        assert port.startswith("${GAPO_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert _env_example()["GAPO_BIND_ADDRESS"] == "127.0.0.1"


def test_no_secret_literals_in_compose():
    text = COMPOSE.read_text()
    for name, svc in _compose()["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if any(w in key for w in SECRET_WORDS) and key not in ("MLFLOW_AUTH_DEFAULT_PERMISSION",):
                assert "${" in str(value), f"{name}.{key} must come from infra/.env, got {value!r}"
    for key, value in _env_example().items():
        if any(w in key for w in SECRET_WORDS):
            assert value not in text, f"the value of {key} is written into docker-compose.yml"


def test_env_example_holds_only_placeholders():
    env = _env_example()
    for key, value in env.items():
        if any(w in key for w in SECRET_WORDS):
            assert "change-me" in value, f"{key}={value!r} in .env.example must be a change-me placeholder"
    assert len(env["MLFLOW_ADMIN_PASSWORD"]) >= 12          # MLflow refuses shorter admin passwords
    assert ":" in env["PREFECT_AUTH_STRING"]                 # user:password
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO)
    assert ignored.returncode == 0, "infra/.env must be git-ignored"


def _docker_compose_cmd() -> list[str] | None:
    """`docker compose` (the v2 plugin; DOCKER_CONFIG may point at a config dir holding cli-plugins/), else a
    standalone v2 `docker-compose` binary; None when neither is there (the test then skips)."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            ok = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok.returncode == 0 and "v2." in ok.stdout:
            return cmd
    return None


@pytest.mark.skipif(_docker_compose_cmd() is None, reason="no `docker compose` plugin on this machine")
def test_docker_compose_config_validates():
    cmd = _docker_compose_cmd() + ["-f", str(COMPOSE), "--env-file", str(INFRA / ".env.example"),
                                    "--profile", "gpu", "--profile", "build", "config", "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert set(cfg["services"]) == {"postgres", "minio", "minio-init", "mlflow", "prefect-server",
                                    "prefect-bootstrap", "worker", "docker-worker", "trainer"}
    for svc in cfg["services"].values():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1"
    # without the env file, compose refuses instead of starting with empty secrets
    bare = subprocess.run(_docker_compose_cmd() + ["-f", str(COMPOSE), "--env-file", os.devnull, "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0 and "infra/.env" in bare.stderr


# ------------------------------------------------------------------------------------------------ pools
def _render(template: dict, job_variables: dict) -> dict:
    """The worker's rendering (BaseJobConfiguration.from_template_and_values without the API calls)."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    variables.update(job_variables)
    return apply_values(template["job_configuration"], variables)


def _stanza(name: str) -> dict:
    stanzas = yaml.safe_load((INFRA / "prefect-deployments.yaml").read_text())["deployments"]
    return next(s for s in stanzas if s["name"] == name)


def test_k8s_template_requests_gpus_and_mounts_the_shared_pvc():
    template = json.loads((INFRA / "k8s" / "prefect-base-job-template.json").read_text())
    job = _render(template, _stanza("kubernetes")["work_pool"]["job_variables"])
    manifest = job["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["memory"] == "256Gi"
    assert "cpu" not in container["resources"]["limits"]          # unset variables drop their key
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["gapo-shared"]["persistentVolumeClaim"]["claimName"] == "gapo-shared"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"gapo-shared": "/mnt/gapo", "dshm": "/dev/shm"}
    assert container["envFrom"] == [{"secretRef": {"name": "gapo-runtime"}}]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "{{" not in json.dumps(manifest)


def test_docker_template_requests_gpus_and_mounts_the_shared_volume():
    template = json.loads((INFRA / "docker" / "prefect-base-job-template.json").read_text())
    job = _render(template, _stanza("docker")["work_pool"]["job_variables"])
    assert job["image"] == "gapo-pipeline/trainer:dev"
    assert job["volumes"] == ["gapo-shared:/mnt/gapo"] and job["networks"] == ["gapo-net"]
    kwargs = job["container_create_kwargs"]
    docker_types = pytest.importorskip("docker.types")
    host = docker_types.HostConfig(version="1.45", **kwargs)     # what docker-py sends to the engine
    assert host["DeviceRequests"][0]["Driver"] == "nvidia" and host["DeviceRequests"][0]["Count"] == -1
    assert host["ShmSize"] == 32 * 1024 ** 3
    secret_refs = [v for v in job["env"].values() if "prefect.blocks.secret" in v]
    assert len(secret_refs) == 4                                  # resolved by the worker at run time


def test_compose_names_match_the_docker_template():
    cfg = _compose()
    assert cfg["volumes"]["gapo-shared"]["name"] == "gapo-shared"
    assert cfg["networks"]["gapo-net"]["name"] == "gapo-net"


def test_deployment_stanzas():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("gapo_infra_bootstrap_static", INFRA / "prefect" / "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bootstrap
    spec.loader.exec_module(bootstrap)
    stanzas = yaml.safe_load((INFRA / "prefect-deployments.yaml").read_text())["deployments"]
    assert {s["work_pool"]["name"] for s in stanzas} == set(bootstrap.POOLS)
    for s in stanzas:
        assert s["entrypoint"] == "flows/gapo_pipeline.py:gapo_pipeline"
        assert s["pull"][0] == {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/gapo"}}
        assert "env" not in s["work_pool"]["job_variables"], "secrets and env belong to the pool templates"
        assert "{{" not in json.dumps(s)    # prefect deploy would resolve (and store) them at deploy time


# ------------------------------------------------------------------------------------------------ deepspeed
@pytest.mark.parametrize("name", ["single-node-8gpu.example.yaml", "multi-node.example.yaml"])
def test_deepspeed_examples_are_valid_params(name):
    from gapo.config import validate

    params = validate(yaml.safe_load((INFRA / "deepspeed" / name).read_text()), name)
    assert params.deepspeed.launcher == "deepspeed" and params.deepspeed.num_processes == 8


def test_hostfile_example_format():
    lines = [ln for ln in (INFRA / "deepspeed" / "hostfile.example").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[\w.-]+ slots=\d+", ln) for ln in lines)


# ------------------------------------------------------------------------------------------------ pull step
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("dvc") is None and not (Path(os.sys.executable).parent / "dvc").exists(),
                    reason="dvc not installed")
def test_container_pull_step_points_dvc_at_the_shared_volume(tmp_path):
    repo, shared = tmp_path / "repo", tmp_path / "shared"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GAPO_SHARED_DIR": str(shared), "GAPO_DVC_REMOTE_URL": "s3://dvc/gapo",
           "AWS_ENDPOINT_URL_S3": "http://minio:9000"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=env, check=True)
    proc = subprocess.run(["sh", str(INFRA / "prefect" / "container-pull.sh")], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    local = (repo / ".dvc" / "config.local").read_text()
    assert str(shared / "dvc-cache") in local
    assert "url = s3://dvc/gapo" in local and "endpointurl = http://minio:9000" in local
    assert "remote = minio" in local
    assert "secret" not in local.lower() and "access_key" not in local.lower()
    # rerunnable: a second flow run on the same checkout must not fail
    again = subprocess.run(["sh", str(INFRA / "prefect" / "container-pull.sh")], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=100)
    assert again.returncode == 0, again.stderr
