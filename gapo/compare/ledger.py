"""The grid's ledger: each finished experiment of a `gapo compare` grid as one small JSON file in the repository
(`compare.ledger`, default reports/compare_runs/<experiment name>.json).

Why it exists: DVC keeps a finished experiment as a git ref (refs/exps/...) and its outputs in the local cache. Both
stay on the machine unless pushed (`dvc exp push` to a git remote and a DVC remote), and a grid takes longer than a
working session. On 2026-12-07 a fresh machine lost 18 finished experiments of the real-model grid that way
(docs/baselines.md). Committed with the repository, the ledger survives a fresh clone: `gapo compare` there reuses
every entry whose code fingerprint matches the workspace and queues only the rest.

An entry holds what the report needs and nothing else: the grid point (method, paradigm, seed), the grid id (its
params), the code fingerprint, the experiment's commits, its metrics/evaluate.json, and per test prompt the IFEval
verdicts of reports/eval_samples.jsonl (not the responses, which stay in DVC's cache).

The code fingerprint names the code an experiment ran: the definitions of the dvc.yaml stages up to the grid's
target (cmd, deps, params, outs) and the git blob of every tracked file under those stages' deps. Two commits with
the same fingerprint run the same experiment (params aside, which the grid id names), whatever else changed between
them: docs, tests, or this comparison driver, which no stage depends on.

Pure: `stage_chain`, `code_deps`, `code_fingerprint`, `git_blob_sha`, `verdict_rows`, `make_entry`, `check_same_code`;
I/O: `read_ledger`, `write_entry`, `blobs_at`, `blobs_in_workspace`, `fingerprint_at`, `fingerprint_of_workspace`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from gapo.compare.claims import _INST_FIELDS, _PROMPT_FIELDS
from gapo.errors import GapoError

VERDICT_FIELDS = (*_PROMPT_FIELDS.values(), *_INST_FIELDS.values())
SCHEMA = 1


class LedgerError(GapoError):
    """A ledger that cannot be used as it stands (one line)."""


# ============================================================================================ fingerprint (pure)
def _paths(items: Optional[Iterable[Any]]) -> list[str]:
    """dvc.yaml deps/outs entries are a path or {path: options}."""
    out: list[str] = []
    for item in items or ():
        out += [str(k) for k in item] if isinstance(item, Mapping) else [str(item)]
    return out


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def stage_chain(stages: Mapping[str, Mapping[str, Any]], target: str) -> list[str]:
    """`target` and every stage it depends on through another stage's outs, in dvc.yaml order."""
    if target not in stages:
        raise LedgerError(f"ledger: no stage {target!r} in dvc.yaml (stages: {', '.join(stages)})")
    outs = {s: _paths(d.get("outs")) + _paths(d.get("metrics")) + _paths(d.get("plots")) for s, d in stages.items()}
    chain, todo = {target}, [target]
    while todo:
        for dep in _paths(stages[todo.pop()].get("deps")):
            for s, paths in outs.items():
                if s not in chain and any(_under(dep, o) or _under(o, dep) for o in paths):
                    chain.add(s)
                    todo.append(s)
    return [s for s in stages if s in chain]


def code_deps(stages: Mapping[str, Mapping[str, Any]], chain: Iterable[str]) -> list[str]:
    """The chain's deps that no stage writes. A `cache: false` metric or plot (plots/sft_loss.csv) is committed with
    an experiment but is no code: it comes from the code and params already counted."""
    written = [o for d in stages.values() for o in _paths(d.get("outs")) + _paths(d.get("metrics"))
               + _paths(d.get("plots"))]
    return sorted({d for s in chain for d in _paths(stages[s].get("deps"))
                   if not any(_under(d, o) or _under(o, d) for o in written)})


def code_fingerprint(stages: Mapping[str, Mapping[str, Any]], target: str, blobs: Mapping[str, str]) -> str:
    """12 hex digits over the chain's stage definitions and the blobs ({path: git blob sha} of tracked files) under
    its deps. Deps that are stage outputs (data, checkpoints) are not in git and drop out: the code and params that
    produce them are already counted."""
    chain = stage_chain(stages, target)
    definition = {s: {k: stages[s].get(k) for k in ("cmd", "deps", "params", "outs")} for s in chain}
    files = sorted((p, b) for p, b in blobs.items() if any(_under(p, d) for d in code_deps(stages, chain)))
    doc = json.dumps({"stages": definition, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def git_blob_sha(data: bytes) -> str:
    """The object name `git hash-object` gives these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ============================================================================================ fingerprint (I/O)
def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LedgerError(f"ledger: `git {' '.join(args)}` failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _load_stages(text: str) -> dict:
    import yaml

    return (yaml.safe_load(text) or {}).get("stages") or {}


def blobs_at(root: Path, rev: str) -> dict[str, str]:
    """{path: blob sha} of every file in commit `rev`."""
    out = {}
    for line in _git(root, "ls-tree", "-r", rev).splitlines():
        meta, _, path = line.partition("\t")
        out[path] = meta.split()[2]
    return out


def blobs_in_workspace(root: Path, under: Iterable[str]) -> dict[str, str]:
    """{path: blob sha} of the tracked files under `under`, hashed as they are on disk now: a queued experiment runs
    the workspace with its uncommitted changes, and so must the fingerprint it is compared with."""
    out = {}
    for path in _git(root, "ls-files", "-z", "--", *under).split("\0"):
        if path and (root / path).is_file():
            out[path] = git_blob_sha((root / path).read_bytes())
    return out


def fingerprint_at(root: Path, rev: str, target: str) -> str:
    return code_fingerprint(_load_stages(_git(root, "show", f"{rev}:dvc.yaml")), target, blobs_at(root, rev))


def fingerprint_of_workspace(root: Path, target: str) -> str:
    stages = _load_stages((root / "dvc.yaml").read_text())
    return code_fingerprint(stages, target, blobs_in_workspace(root, code_deps(stages, stage_chain(stages, target))))


# ============================================================================================ entries
def verdict_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """reports/eval_samples.jsonl rows -> [{key, <verdict fields>}]: all `claims.per_prompt` reads."""
    return [{"key": str(r["key"]), **{f: r[f] for f in VERDICT_FIELDS if f in r}} for r in rows]


def make_entry(record: Mapping[str, Any], grid: str, code: str, baseline: str,
               samples: Optional[list[dict[str, Any]]], finished_at: str = "") -> dict[str, Any]:
    """One ledger entry from a collected experiment {name, method, paradigm, seed, rev, metrics}; samples None when
    the experiment's eval_samples could not be read (its cell then stays out of the paired claims). finished_at is
    the experiment commit's time: the gaps between a grid's entries are its per-experiment wall times."""
    return {"schema": SCHEMA, "grid": grid, "code": code, "name": record["name"], "method": record["method"],
            "paradigm": record["paradigm"], "seed": int(record["seed"]), "rev": record["rev"], "baseline": baseline,
            "finished_at": finished_at, "metrics": record["metrics"], "samples": samples}


def check_same_code(entries: Mapping[str, Mapping[str, Any]], code: str, gid: str, ledger: str) -> None:
    """A grid mixes no code: entries of another fingerprint than the workspace's refuse the run, with the way on."""
    other = sorted((e["code"], e["baseline"][:7], n) for n, e in entries.items() if e["code"] != code)
    if other:
        kinds = sorted({(c, b) for c, b, _ in other})
        where = "; ".join(f"code {c} (commit {b}): {sum(1 for o in other if o[:2] == (c, b))}" for c, b in kinds)
        raise LedgerError(f"compare: grid {gid} holds {len(other)} finished experiments of other code ({where}) and "
                          f"the workspace is code {code}; continue it with `git checkout {kinds[0][1]}` then "
                          f"`gapo compare`, or start it again after moving {ledger}/cmp-{gid}-* away")


def read_ledger(directory: Path, gid: str) -> dict[str, dict[str, Any]]:
    """{experiment name: entry} of grid `gid` (files named cmp-<gid>-*.json)."""
    out = {}
    for f in sorted(Path(directory).glob(f"cmp-{gid}-*.json")):
        try:
            entry = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LedgerError(f"ledger: {f} is not readable JSON ({e}); restore it from git or delete it") from e
        if entry.get("schema") != SCHEMA or entry.get("grid") != gid or entry.get("name") != f.stem:
            raise LedgerError(f"ledger: {f} is not an entry of grid {gid} (schema {SCHEMA}); delete it")
        out[entry["name"]] = entry
    return out


def write_entry(directory: Path, entry: Mapping[str, Any]) -> Path:
    """Atomically: a grid killed mid-write leaves the old file or none, never half an entry."""
    from gapo.io import atomic_file

    path = Path(directory) / f"{entry['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")  # ~40 KB; written once
    return path
