"""User data: read, validate and split the files named in `data.user` (params).

A source is a jsonl file, a directory holding {train,validation,test}.jsonl, or a saved HF Dataset /
DatasetDict. Each record is checked against gapo.data.schema (fields, types, known IFEval instruction ids,
each instruction's arguments) and, with `data.user.verify`, against the IFEval checkers themselves (a chosen
prompt satisfied, a rejected one violated). The first problem raises one `DataError` line naming the file,
the line (or split and row), the field and what was expected.

Reading is streaming and bounded: no line longer than `data.user.max_line_bytes` is ever held in memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from gapo.data import schema
from gapo.data.corpus import seeded_rng
from gapo.errors import DataError
from gapo.paths import SPLITS

# data.user field -> record kind
USER_KINDS = {"ifeval": "ifeval", "sft": "sft", "preferential_prompt": "pp", "preferential_response": "pr"}


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# JSON nested deeper than this is refused before Python's parser would hit its recursion limit.
MAX_JSON_DEPTH = 64


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:  # json.loads would keep the last one silently
            raise _DuplicateField(key)
        out[key] = value
    return out


class _DuplicateField(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (a linear scan, no recursion)."""
    depth, in_str, esc = 0, False, False
    if text.count("[") + text.count("{") <= limit:
        return False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_json_line(text: str, where: str) -> Any:
    """One JSON value of a jsonl line, or a one-line DataError naming `where`: invalid JSON, a field given twice in
    one object, nesting deeper than MAX_JSON_DEPTH, an integer too long to parse, or a lone surrogate (text that is
    not Unicode and could never be written back as UTF-8)."""
    if _depth_exceeds(text, MAX_JSON_DEPTH):
        raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(text, object_pairs_hook=_unique_fields)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except _DuplicateField as exc:
        raise DataError(f"{where}: field {_short(repr(exc.key), 60)}: given twice in one object (JSON would keep "
                        "the last one silently)") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # int('9' * 5000): Python's limit on digits
        raise DataError(f"{where}: invalid JSON ({_short(exc, 120)})") from None
    if "\\u" in text or "\\U" in text:
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(f"{where}: a string holds a lone surrogate {exc.object[exc.start]!r} (\\u escape of "
                            "half a UTF-16 pair; not valid Unicode text)") from None
    return obj


def open_input(path: Path):
    """`open(path, "rb")` for a regular file, else a one-line DataError (a directory, FIFO or device, a symlink loop,
    no permission); a FIFO is never opened (that would block until something writes to it)."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, expected a .jsonl file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device), expected a .jsonl file")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def iter_jsonl(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; DataError on the first bad line."""
    n_objects = 0
    with open_input(path) as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 2)
            if not raw:
                break
            lineno += 1
            content = raw.rstrip(b"\r\n")
            if len(content) > max_line_bytes:
                raise DataError(f"{path} line {lineno}: line longer than data.user.max_line_bytes="
                                f"{max_line_bytes} bytes (expected one JSON object per line)")
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not UTF-8 text ({exc.reason} at byte {exc.start + 1} "
                                "of the line)") from None
            if not text.strip():
                continue
            obj = parse_json_line(text, f"{path} line {lineno}")
            n_objects += 1
            yield lineno, obj
    if n_objects == 0:
        raise DataError(f"{path}: file is empty (expected one JSON object per line)")


def _check(kind: str, rec: Any, where: str, index: int, verify: bool) -> dict:
    if isinstance(rec, dict):
        rec = dict(rec)
        for name, default in schema.USER_DEFAULTS[kind].items():
            if rec.get(name) is None:
                rec[name] = default(index)
    try:
        schema.validate_record(kind, rec, allow_empty_constraints=True)
        out = schema.normalise(kind, rec)
        if verify:
            schema.verify_record(kind, out)
    except schema.RecordError as exc:
        raise DataError(f"{where}: field '{exc.field}': {_short(exc.message, 300)}") from None
    return out


def _split_of(rec: Any, where: str, seed: int, validation_fraction: float, key: Any) -> str:
    split = rec.get("split") if isinstance(rec, dict) else None
    if split is not None:
        if split not in SPLITS:
            raise DataError(f"{where}: field 'split': expected one of {list(SPLITS)}, got {_short(repr(split))}")
        return split
    # No split given: a seeded hash of the key, validation_fraction each to validation and test.
    u = seeded_rng(seed, "user-split", key).random()
    return "validation" if u < validation_fraction else "test" if u < 2 * validation_fraction else "train"


def _hf_rows(path: Path) -> dict[Optional[str], list[dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad directory
        raise DataError(f"{path}: not a readable saved HF dataset ({type(exc).__name__}: {_short(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        bad = [s for s in ds if s not in SPLITS]
        if bad:
            raise DataError(f"{path}: split {bad[0]!r} of the DatasetDict: expected splits among {list(SPLITS)}")
        return {s: ds[s].to_list() for s in ds}
    return {None: ds.to_list()}


def load_source(kind: str, path_str: str, param: str, max_line_bytes: int, seed: int,
                validation_fraction: float, verify: bool) -> dict[str, list[dict]]:
    """Records of one user source, validated, by split."""
    path = Path(path_str).expanduser()
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    entries: list[tuple[Optional[str], str, Any]] = []   # (split or None, where, record)
    if not path.exists():
        why = "symlink loop or dangling symlink" if path.is_symlink() else "file not found"
        raise DataError(f"{path}: {why} (data.user.{param})")
    if not path.is_dir():
        for lineno, obj in iter_jsonl(path, max_line_bytes):
            entries.append((None, f"{path} line {lineno}", obj))
    elif (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        for split, rows in _hf_rows(path).items():
            for i, row in enumerate(rows):
                where = f"{path} split {split} row {i}" if split else f"{path} row {i}"
                entries.append((split, where, row))
        if not entries:
            raise DataError(f"{path}: the saved dataset has no rows")
    else:
        files = [path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").exists()]
        if not files:
            raise DataError(f"{path}: directory holds neither train/validation/test.jsonl nor a saved HF dataset "
                            f"(data.user.{param})")
        for f in files:
            for lineno, obj in iter_jsonl(f, max_line_bytes):
                entries.append((f.stem, f"{f} line {lineno}", obj))
    first_line: dict[int, str] = {}
    for index, (split, where, rec) in enumerate(entries):
        rec = _check(kind, rec, where, index, verify)
        # lm-eval identifies prompts by key (two prompts with one key would overwrite each other's scores), and a key
        # given twice in sft / pp / pr data would repeat its rows.
        if rec["key"] in first_line:
            raise DataError(f"{where}: field 'key': duplicate key {rec['key']} (first at {first_line[rec['key']]})")
        first_line[rec["key"]] = where
        raw_split = split if split is not None else _split_of(entries[index][2], where, seed, validation_fraction,
                                                              rec["key"])
        out[raw_split].append(rec)
    return out


def _signature(path: Path) -> tuple:
    """(name, size, mtime) of a source's files: a validated source is reused only while none of them changed."""
    try:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return ()


# Validated sources by (arguments, file signature): gapo.preflight validates user files before the MLflow run opens
# and the stage then loads them again; the second load is this lookup. Small: a process loads a few sources.
_VALIDATED: dict[tuple, dict[str, list[dict]]] = {}


def load_user_data(user_cfg, seed: int, validation_fraction: float) -> dict[str, dict[str, list[dict]]]:
    """{kind: {split: records}} for every source set in `data.user`."""
    import copy

    loaded = {}
    for param, kind in USER_KINDS.items():
        path = getattr(user_cfg, param)
        if path:
            sig = _signature(Path(path).expanduser())
            key = (kind, str(path), param, user_cfg.max_line_bytes, seed, validation_fraction, user_cfg.verify, sig)
            if not sig or key not in _VALIDATED:
                result = load_source(kind, path, param, user_cfg.max_line_bytes, seed, validation_fraction,
                                     user_cfg.verify)
                if sig:
                    if len(_VALIDATED) >= 8:
                        _VALIDATED.clear()
                    _VALIDATED[key] = result
                loaded[kind] = copy.deepcopy(result) if sig else result
            else:
                loaded[kind] = copy.deepcopy(_VALIDATED[key])
    return loaded
