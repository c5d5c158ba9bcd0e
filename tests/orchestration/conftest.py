"""Fixtures for the orchestration tests: tiny HF models and a private MLflow store (repo copies: tests/repo_copies)."""
from __future__ import annotations

import os

import pytest

@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A private sqlite MLflow store for this test; tracking on; no parent run inherited."""
    for key in list(os.environ):
        if key.startswith(("GAPO_MLFLOW", "GAPO_PREFECT", "GAPO_PIPELINE", "MLFLOW_")):
            monkeypatch.delenv(key, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GAPO_TRACKING", "on")
    monkeypatch.setenv("GAPO_REGISTRY_LOCK_DIR", str(tmp_path / "locks"))
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # process-global: never let a previous test's store leak into this one
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(policy dir, reward dir): a 2-layer Llama and a 2-layer BERT classifier, tokenizers trained here."""
    from tests.orchestration.tiny_models import build_policy, build_reward

    root = tmp_path_factory.mktemp("tiny-models")
    return build_policy(root / "policy"), build_reward(root / "reward")
