"""Shared fixtures. Tests run offline, on CPU, with small data; slow end-to-end tests are marked `slow`."""
from __future__ import annotations

import os

import pytest

import gapo  # noqa: F401  (sets the offline / no-telemetry environment)

os.environ.setdefault("PREFECT_HOME", os.path.join(os.path.dirname(__file__), "..", ".prefect-home"))
# Stages called through the CLI open MLflow runs (gapo.tracking); unit tests run them untracked. The tests in
# tests/orchestration switch tracking on for the processes they start.
os.environ.setdefault("GAPO_TRACKING", "off")


@pytest.fixture
def workspace(tmp_path):
    from gapo.paths import Workspace

    return Workspace(tmp_path)
