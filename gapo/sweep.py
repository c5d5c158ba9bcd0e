"""Leftovers of killed work, swept when a stage starts in the workspace (docs/reliability.md, "Leftovers").

A kill -9 runs no cleanup code, so it can leave behind:
- the temp sibling of an atomic write (gapo.io): `.<name>.<random>.tmp`, a file (`atomic_file`) or a directory
  (`atomic_dir`), and `.<name>.<random>.old`, the previous output `atomic_dir` moves aside just before the swap;
- the scratch folder of a TRL baseline, `checkpoints/gapo-<method>-<random>/` (a TemporaryDirectory);
- logged-model folders under `<artifact root>/models/` of a `register` that was killed between logging a model and
  registering it: MLflow stores a model's files first and registers a version after, so no version points at them.

Why it is safe: `gapo <stage>` sweeps while it holds the workspace's stage lock (`.gapo/stage.lock`), so no other
stage of this workspace is writing; a temp path is removed only if nothing in it changed since this process started
(a kill of an earlier attempt happened before that) and no live process has a file in it open; a logged model is removed only if the run that logged it belongs
to this workspace, ended KILLED or FAILED (a live upload keeps its run RUNNING; a run of a dead process was just
closed as KILLED by gapo.tracking.runs.mark_killed_runs) and no registry version uses it. Other workspaces'
runs and models sharing the same store are never touched.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

# tempfile.mkstemp / mkdtemp put 8 characters of [a-z0-9_] between our prefix and suffix (gapo.io.tmp_sibling).
_RANDOM = r"[a-z0-9_]{8}"
TEMP_NAME = re.compile(rf"^\..+\.{_RANDOM}\.(?:tmp|old)$")
TRAINER_SCRATCH = re.compile(rf"^gapo-(?:dpo|kto|orpo|simpo)-{_RANDOM}$")
# Where stages write (gapo.paths.Workspace); the root itself is scanned without recursion (params.yaml, data/ swap).
OUTPUT_AREAS = ("data", "models", "checkpoints", "metrics", "plots", "reports")


def _process_started() -> float:
    """When this process started: the start of the current attempt, as far as this stage can tell."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing: a little later than the truth, still before any kill we sweep
        return time.time()


def _newest_mtime(path: Path) -> float:
    """Latest modification time of `path` and, for a directory, of anything under it (symlinks not followed)."""
    newest = os.lstat(path).st_mtime
    if path.is_dir() and not path.is_symlink():
        for base, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(base, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def _paths_in_use() -> set[str] | None:
    """Files that a live process has open and working directories of live processes (psutil; None when it cannot
    tell). An atomic write keeps its temp file open until it renames it."""
    try:
        import psutil
    except ImportError:
        return None
    used = set()
    for proc in psutil.process_iter():
        try:
            used.add(proc.cwd())
            used.update(f.path for f in proc.open_files())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return used


def _in_use(path: Path, used: set[str]) -> bool:
    text = str(path)
    return any(u == text or u.startswith(text + os.sep) for u in used)


def _is_leftover(path: Path, parent_is_checkpoints: bool) -> bool:
    return bool(TEMP_NAME.match(path.name)) or (parent_is_checkpoints and bool(TRAINER_SCRATCH.match(path.name)))


def find_temp_leftovers(root: Path) -> Iterator[Path]:
    """Every temp path of an atomic write (or TRL scratch folder) in the workspace's output areas and at its root;
    a matching directory is yielded whole, not entered."""
    root = Path(root)
    with os.scandir(root) as entries:
        top = [Path(e.path) for e in entries]
    for path in top:
        if TEMP_NAME.match(path.name):
            yield path
    for area in OUTPUT_AREAS:
        base = root / area
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirs, files in os.walk(base):
            here = Path(dirpath)
            in_checkpoints = here == root / "checkpoints"
            for name in list(dirs):
                if _is_leftover(here / name, in_checkpoints):
                    dirs.remove(name)
                    yield here / name
            for name in files:
                if TEMP_NAME.match(name):
                    yield here / name


def sweep_temp_files(root: Path, before: float | None = None) -> list[Path]:
    """Delete the temp leftovers under `root` that nothing touched since `before` (default: this process's start)
    and no live process has open. Call it only while holding the workspace's stage lock. Returns what was deleted."""
    before = _process_started() if before is None else before
    found = list(find_temp_leftovers(Path(root)))
    used = _paths_in_use() if found else set()  # scanning every process costs ~0.1 s: only when there is a candidate
    swept = []
    for path in found:
        try:
            if _newest_mtime(path) >= before:  # written during this attempt: not a leftover of a killed one
                continue
            if used is None or _in_use(path, used):  # a live writer outside the lock (`gapo config --write`)
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        swept.append(path)
    return swept


# -- logged models of killed registrations --------------------------------------------------------------------------
def _logged_models(client, exp_id: str):
    token = None
    while True:
        page = client.search_logged_models([exp_id], max_results=100, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _delete_model_files(artifact_location: str, model_id: str) -> None:
    """The model's folder (`.../models/<model id>/`) for a local store; the artifacts through MLflow otherwise."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_location)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        folder = path.parent if path.name == "artifacts" and path.parent.name == model_id else path
        shutil.rmtree(folder, ignore_errors=True)
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_location).delete_artifacts()


def sweep_orphan_models(client, exp_id: str, root: Path) -> list[str]:
    """Delete the logged models (files, and the entry: soft-deleted, as `mlflow gc` expects) that a KILLED or FAILED
    run of this workspace logged and no registry version uses. Returns their ids."""
    ws = str(root)
    runs: dict[str, object] = {}
    used: dict[str, set[str]] = {}
    swept = []
    for model in list(_logged_models(client, exp_id)):
        run_id = model.source_run_id
        if not run_id:
            continue
        if run_id not in runs:
            runs[run_id] = client.get_run(run_id)
        run = runs[run_id]
        if run.data.tags.get("gapo.workspace") != ws or run.info.status not in ("KILLED", "FAILED"):
            continue
        if run_id not in used:
            used[run_id] = {mv.source for mv in client.search_model_versions(f"run_id = '{run_id}'")}
        if f"models:/{model.model_id}" in used[run_id]:
            continue
        _delete_model_files(model.artifact_location, model.model_id)
        client.delete_logged_model(model.model_id)
        swept.append(model.model_id)
    return swept


def report(what: str, items: list) -> None:
    """One stderr line per sweep that removed something (what, how many, the first few)."""
    if items:
        shown = ", ".join(str(i) for i in items[:3]) + (", ..." if len(items) > 3 else "")
        print(f"gapo: swept {len(items)} {what} of a killed run: {shown}", file=sys.stderr, flush=True)
