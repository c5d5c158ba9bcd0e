"""Scripts outside the test suite's import graph (benchmarks/, infra/, scripts/) still name what gapo exports.

A refactor that moves a function breaks `python benchmarks/<x>.py` only when someone runs it; this reads their
`from gapo... import` / `from flows... import` statements (top level and inside functions) and resolves each name."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_scripts() -> list[Path]:
    """The repository's own .py files under benchmarks/, infra/ and scripts/: git's list, so ignored run state
    (infra/ci/state holds MLflow's copies of old code) is not read as a script."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "--", "benchmarks/*.py", "infra/*.py", "scripts/*.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted(ROOT / line for line in out.splitlines() if line)


SCRIPTS = tracked_scripts()


def imported_names(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in ("gapo",
                                                                                                           "flows"):
            out.extend((node.module, a.name) for a in node.names)
    return out


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports_resolve(path):
    missing = []
    for module, name in imported_names(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} imports names that no longer exist: {missing}"


def test_the_check_sees_a_stale_import(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("def f():\n    from gapo.train.ppo import no_such_function\n")
    assert imported_names(stale) == [("gapo.train.ppo", "no_such_function")]
    assert not hasattr(importlib.import_module("gapo.train.ppo"), "no_such_function")
