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


def iter_jsonl(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; DataError on the first bad line."""
    n_objects = 0
    with open(path, "rb") as fh:
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
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
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
        raise DataError(f"{path}: file not found (data.user.{param})")
    if path.is_file():
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
        if kind == "ifeval":
            # lm-eval identifies prompts by key; two prompts with one key would overwrite each other's scores.
            if rec["key"] in first_line:
                raise DataError(f"{where}: field 'key': duplicate key {rec['key']} (first at {first_line[rec['key']]})")
            first_line[rec["key"]] = where
        raw_split = split if split is not None else _split_of(entries[index][2], where, seed, validation_fraction,
                                                              rec["key"])
        out[raw_split].append(rec)
    return out


def load_user_data(user_cfg, seed: int, validation_fraction: float) -> dict[str, dict[str, list[dict]]]:
    """{kind: {split: records}} for every source set in `data.user`."""
    loaded = {}
    for param, kind in USER_KINDS.items():
        path = getattr(user_cfg, param)
        if path:
            loaded[kind] = load_source(kind, path, param, user_cfg.max_line_bytes, seed, validation_fraction,
                                       user_cfg.verify)
    return loaded
