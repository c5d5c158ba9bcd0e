"""Helpers shared by the data-engine tests (a plain module: conftest files are not importable by name)."""
from __future__ import annotations

from gapo.io import read_jsonl

SMALL = ("data.num_products=120", "data.test_prompts=80", "data.workers=1")


def small_params(*extra: str):
    from gapo.config import load_params

    return load_params(None, [*SMALL, *extra])


def records(ws, kind: str, split: str | None = None) -> list[dict]:
    splits = [split] if split else ["train", "validation", "test"]
    return [r for s in splits for r in read_jsonl(ws.jsonl(kind, s))]
