"""Fast checks of infra/ci/pipeline_check.py (the real run is `.ci/run`'s last step): its overrides are valid params
of the tiny profile, it reads the env file servers.sh writes, and its deployment parameters match the flow's."""
from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("gapo_pipeline_check", REPO / "infra" / "ci" / "pipeline_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_fast_overrides_are_valid_tiny_params():
    from gapo.config import load_params

    pc = _load()
    params = load_params(None, list(pc.FAST), "tiny")
    assert params.adversarial.rounds == 1 and params.sft.max_steps == 3
    assert params.ppo.train_batch_size % params.ppo.micro_train_batch_size == 0


def test_reads_the_env_file_servers_sh_writes(tmp_path):
    text = (REPO / "infra" / "ci" / "servers.sh").read_text()
    body = text[text.index("cat > \"$_S/servers.env\" <<ENV") + 30:text.index("\nENV\n")]
    sample = (body.replace("$GAPO_MLFLOW_PORT", "5001").replace("$MLFLOW_ADMIN_PASSWORD", "pw1")
              .replace("$GAPO_PREFECT_PORT", "4201").replace("$PREFECT_AUTH_PASSWORD", "pw2")
              .replace("$GAPO_PG_PORT", "5433").replace("$_S", str(tmp_path)))
    (tmp_path / "servers.env").write_text(sample)
    env = _load().read_env_file(tmp_path / "servers.env")
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001" and env["MLFLOW_TRACKING_PASSWORD"] == "pw1"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4201/api" and env["PREFECT_API_AUTH_STRING"] == "gapo:pw2"
    srv = _load().Servers(env)
    assert srv.prefect_auth == ("gapo", "pw2") and srv.mlflow_auth == ("gapo-admin", "pw1")


def test_the_run_parameters_exist_on_the_flow():
    from flows.gapo_pipeline import gapo_pipeline

    names = set(inspect.signature(gapo_pipeline.fn).parameters)
    assert {"profile", "overrides"} <= names
