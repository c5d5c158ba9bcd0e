#!/usr/bin/env python3
"""Did two runs compute the same thing? Compares two workspaces' metrics/*.json (timing fields left out) and the
weights of every checkpoint (sha256 of each model.safetensors), and says what differs.

    python scripts/same_run.py WS_BEFORE WS_AFTER        # exit 0: same metrics and weights; 1: a difference

Made for refactors that must not change behaviour: run the stages with the old code into one workspace and the
new code into another, same params and seed (docs/architecture.md, "Behaviour unchanged").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gapo.io import content_hash

TIMING = ("time_s", "seconds", "samples_per_s", "tokens_per_s", "wall_s", "timing/")


def flatten(obj, prefix: str = "") -> dict:
    # Lists too, unlike gapo.tracking.runs.flatten: per-round records sit in lists and carry timings to leave out.
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in flatten(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: obj}


def is_timing(key: str) -> bool:
    return any(t in key for t in TIMING) or key.endswith("_s")


def metric_differences(a: Path, b: Path) -> list[str]:
    out = []
    names = sorted({p.name for p in (a / "metrics").glob("*.json")} | {p.name for p in (b / "metrics").glob("*.json")})
    for name in names:
        fa, fb = a / "metrics" / name, b / "metrics" / name
        if not (fa.is_file() and fb.is_file()):
            out.append(f"metrics/{name}: only in {'the first' if fa.is_file() else 'the second'} workspace")
            continue
        x, y = flatten(json.loads(fa.read_text())), flatten(json.loads(fb.read_text()))
        for key in sorted(set(x) | set(y)):
            if not is_timing(key) and x.get(key) != y.get(key):
                out.append(f"metrics/{name} {key}: {x.get(key)!r} != {y.get(key)!r}")
    return out


def weight_differences(a: Path, b: Path) -> list[str]:
    out = []
    files = sorted({p.relative_to(a) for p in a.glob("checkpoints/**/model.safetensors")}
                   | {p.relative_to(b) for p in b.glob("checkpoints/**/model.safetensors")})
    for rel in files:
        fa, fb = a / rel, b / rel
        if not (fa.is_file() and fb.is_file()):
            out.append(f"{rel}: only in {'the first' if fa.is_file() else 'the second'} workspace")
        elif content_hash(fa, "sha256") != content_hash(fb, "sha256"):
            out.append(f"{rel}: weights differ")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ns = ap.parse_args(argv)
    diffs = metric_differences(ns.first, ns.second) + weight_differences(ns.first, ns.second)
    n_metrics = len(list(ns.first.glob("metrics/*.json")))
    n_weights = len(list(ns.first.glob("checkpoints/**/model.safetensors")))
    for d in diffs:
        print(d)
    print(f"{'same' if not diffs else f'{len(diffs)} difference(s)'}: {n_metrics} metrics files, "
          f"{n_weights} checkpoints")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
