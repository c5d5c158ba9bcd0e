"""Atomic file and directory writes, jsonl helpers, and the content hash of a file or a directory.

Every stage writes its outputs through these helpers so that a crash, a kill -9 or a validation
error never leaves a half-written file where DVC, MLflow or the next stage would pick it up:
we write into a temporary sibling and `os.replace` it into place (atomic on POSIX for one
filesystem).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

# (temp file, target) pairs staged by `all_or_nothing` in this thread; None when no block is open.
_STAGED = threading.local()
# (workspace root, lock name) of the workspace locks this process holds (`holds_workspace_lock`).
_HELD: set[tuple[str, str]] = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A new empty `.<name>.<random>.tmp<suffix>` beside `path` (gapo.sweep removes orphans of that form)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    # mkstemp creates 0600; outputs should get the permissions a plain open() would give them.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file beside `path`; on success rename it over `path`, on error delete it."""
    path = Path(path)
    tmp = tmp_sibling(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        staged = getattr(_STAGED, "items", None)
        if staged is not None:  # inside all_or_nothing(): renamed with the others when the block succeeds
            staged.append((tmp, path))
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Outputs of several files that land together or not at all: inside the block every `atomic_file` (hence
    write_json / write_jsonl) writes its temp sibling and waits; when the block ends without error all of them are
    renamed into place, one after the other; on any error every temp file is deleted and no target changes (a
    failure writing --samples leaves --output as it was). Nested blocks join the outer one."""
    if getattr(_STAGED, "items", None) is not None:
        yield
        return
    _STAGED.items = []
    try:
        yield
    except BaseException:
        for tmp, _ in _STAGED.items:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        staged, _STAGED.items = _STAGED.items, None
    for tmp, path in staged:
        os.replace(tmp, path)


def _git_tracked(path: Path) -> bool:
    """Whether git tracks `path` (False where git or a repository is missing)."""
    try:
        out = subprocess.run(["git", "ls-files", "--error-unmatch", "--", path.name], cwd=path.parent,
                             capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _dvc_outs(root: Path) -> list[tuple[str, Path]]:
    """(stage, output path) of every stage in <root>/dvc.yaml."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return []
    out = []
    for name, spec in stages.items() if isinstance(stages, dict) else []:
        for key in ("outs", "metrics", "plots"):
            for item in (spec or {}).get(key) or [] if isinstance(spec, dict) else []:
                rel = next(iter(item)) if isinstance(item, dict) else item
                if isinstance(rel, str):
                    out.append((name, (root / rel).resolve()))
    return out


def check_output_paths(outputs: dict[str, Any], inputs: dict[str, Any], root: str | os.PathLike,
                       stage: str = "evaluate") -> None:
    """Refuse, before anything runs, an output path (a CLI flag -> path) that would overwrite something it must not:
    a directory or non-regular file, one of the command's `inputs`, another output of the same call, a file git
    tracks or a `*.dvc`-tracked file, the workspace's params.yaml / dvc.yaml / dvc.lock, or an output DVC assigns
    to another stage than `stage`. Raises one-line GapoError naming the flag and the path."""
    from gapo.errors import GapoError

    root = Path(root).resolve()
    def real(p: Any) -> Path:
        return Path(p).expanduser().resolve()

    taken: dict[Path, str] = {}
    for flag, out in outputs.items():
        if not out:
            continue
        p = Path(out).expanduser()
        if p.is_dir():
            raise GapoError(f"{flag} {out}: is a directory, expected a file path")
        if p.exists() and not p.is_file():
            raise GapoError(f"{flag} {out}: not a regular file (a FIFO, socket or device)")
        if p.parent.exists() and not p.parent.is_dir():
            raise GapoError(f"{flag} {out}: {p.parent} is not a directory")
        rp = real(p)
        for iflag, inp in inputs.items():
            if inp and real(inp) == rp:
                raise GapoError(f"{flag} {out}: is the {iflag} file; refusing to overwrite an input (write elsewhere)")
        if rp in taken:
            raise GapoError(f"{flag} {out}: the same file as {taken[rp]}")
        taken[rp] = flag
        if rp.parent == root and rp.name in ("params.yaml", "dvc.yaml", "dvc.lock"):
            raise GapoError(f"{flag} {out}: is the workspace's {rp.name}; refusing to overwrite it")
        if Path(str(rp) + ".dvc").exists():
            raise GapoError(f"{flag} {out}: DVC tracks it ({rp.name}.dvc); refusing to overwrite it")
        for owner, dvc_out in _dvc_outs(root):
            if owner != stage and (rp == dvc_out or dvc_out in rp.parents):
                raise GapoError(f"{flag} {out}: is an output of the `{owner}` stage in dvc.yaml; refusing to "
                                "overwrite it")
        if rp.exists() and _git_tracked(rp):
            raise GapoError(f"{flag} {out}: git tracks this file; refusing to overwrite it (write elsewhere)")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory beside `path`; on success it replaces `path` as a whole.

    The old directory (if any) is moved aside first and removed only after the new one is in
    place, so at every instant `path` is either the complete old or the complete new output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "x")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=indent, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def dumps_jsonl_line(record: dict) -> str:
    # sort_keys + fixed separators: the same records always give byte-identical files.
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def content_hash(path: str | os.PathLike, algorithm: str = "md5", *, names: bool = False,
                 suffixes: tuple[str, ...] | None = None) -> str:
    """Hex digest of a file's bytes, or of a directory's files (recursive, in sorted path order; only those ending in
    one of `suffixes` when given). `names`: each file's name goes in before its bytes, so a rename changes it."""
    path = Path(path)
    h = hashlib.new(algorithm)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir() and suffixes is not None and f.suffix not in suffixes:
            continue
        if names:
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    n = 0
    with atomic_file(path) as fh:
        for rec in records:
            fh.write(dumps_jsonl_line(rec))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a jsonl file we wrote ourselves (user files go through gapo.data.loaders instead)."""
    from gapo.errors import DataError

    out = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    out.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                # A truncated or hand-edited pipeline file: one line naming it, not a traceback.
                why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise DataError(f"{path} line {lineno}: invalid JSON ({why}); expected one object per line "
                                "(rerun the stage that wrote it)") from None
    return out


@contextlib.contextmanager
def workspace_lock(root: str | os.PathLike, name: str, what: str, timeout_s: float = 0.0) -> Iterator[None]:
    """Hold `<root>/.gapo/<name>.lock` (an OS file lock: released when the process dies, even on kill -9) while a
    pipeline run or stage writes into the workspace. Two writers in one workspace would clobber each other's
    params.yaml and checkpoints; concurrent runs belong in separate workspaces (docs/reliability.md). A holder
    waits up to `timeout_s`, then raises a one-line GapoError naming the other process."""
    from filelock import FileLock, Timeout

    from gapo.errors import GapoError

    base = Path(root) / ".gapo"
    base.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(str(base / f"{name}.lock")), base / f"{name}.owner"
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        other = owner.read_text(encoding="utf-8").strip() if owner.is_file() else "another process"
        raise GapoError(f"workspace {Path(root)}: busy, {other} holds .gapo/{name}.lock (waited {timeout_s:g} s); "
                        "run concurrent pipelines in separate workspaces (docs/reliability.md)") from None
    key = (str(Path(root).resolve()), name)
    try:
        owner.write_text(f"pid {os.getpid()} ({what})\n", encoding="utf-8")
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        lock.release()


def holds_workspace_lock(root: str | os.PathLike, name: str) -> bool:
    """Whether this process holds `<root>/.gapo/<name>.lock` (what gapo.sweep needs before deleting anything)."""
    return (str(Path(root).resolve()), name) in _HELD
