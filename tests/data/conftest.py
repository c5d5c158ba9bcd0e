"""Fixtures for the data-engine tests: one small prepared workspace shared by the read-only tests."""
from __future__ import annotations

import pytest
from tests.data.data_helpers import small_params


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """(workspace, summary) of `run_prepare` on the SMALL params: read it, never write to it."""
    from gapo.data.prepare import run_prepare
    from gapo.paths import Workspace

    ws = Workspace(tmp_path_factory.mktemp("prepared"))
    summary = run_prepare(small_params(), ws)
    return ws, summary
