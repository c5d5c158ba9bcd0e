"""Lineage: what produced a run or a model version, as tags, and the `gapo lineage URI` report.

Tags written on every stage run and on every registered model version:
- `git.commit`, `git.dirty` (and MLflow's own `mlflow.source.git.commit`)
- `dvc.lock.<stage>`: md5 of that stage's `dvc.lock` entry (its deps, params and outs hashes), for every stage
  already locked when the run starts; DVC writes a stage's own entry after the stage, so the run of stage S
  gets `dvc.lock.self` later (backfilled by the next stage, by the Prefect task after `dvc commit`, or by
  `register`)
- `dvc.out.<path>`: the DVC hash of each data/, models/ and checkpoints/ output (model versions only)
- `prefect.flow_run_id`, `prefect.flow_run_name` when a Prefect flow started the stage
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from gapo.tracking import backend

LINEAGE_OUT_PREFIXES = ("data", "models", "checkpoints")


def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "true" if dirty else "false", "mlflow.source.git.commit": commit}


def read_lock(root: Path) -> dict[str, Any]:
    path = root / "dvc.lock"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data.get("stages", {}) or {}


def entry_hash(entry: dict) -> str:
    """md5 of a stage's dvc.lock entry: changes whenever any of its deps, params or outs changes."""
    return hashlib.md5(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def stage_lock_hashes(root: Path) -> dict[str, str]:
    return {stage: entry_hash(entry) for stage, entry in read_lock(root).items()}


def out_hashes(root: Path, prefixes: tuple[str, ...] = LINEAGE_OUT_PREFIXES) -> dict[str, str]:
    """`path -> md5` of every locked output under data/, models/ and checkpoints/."""
    found: dict[str, str] = {}
    for entry in read_lock(root).values():
        for out in entry.get("outs", []) or []:
            path = str(out.get("path", ""))
            if path.split("/", 1)[0] in prefixes and out.get("md5"):
                found[path] = str(out["md5"])
    return dict(sorted(found.items()))


def prefect_tags() -> dict[str, str]:
    tags = {}
    for env, tag in ((backend.ENV_FLOW_RUN_ID, "prefect.flow_run_id"),
                     (backend.ENV_FLOW_RUN_NAME, "prefect.flow_run_name"),
                     (backend.ENV_FLOW_RUN_URL, "prefect.flow_run_url")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_tags(root: Path) -> dict[str, str]:
    """Tags for a stage run: git, the dvc.lock hash of every stage locked so far, Prefect ids, DVC experiment."""
    tags = {**git_info(root), **prefect_tags()}
    tags.update({f"dvc.lock.{stage}": h for stage, h in stage_lock_hashes(root).items()})
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_STAGE"):
        tags["dvc.stage"] = os.environ["DVC_STAGE"]
    return tags


def version_tags(root: Path) -> dict[str, str]:
    """Tags for a registered model version: run tags plus the hash of every data and checkpoint output."""
    tags = run_tags(root)
    tags.update({f"dvc.out.{path}": h for path, h in out_hashes(root).items()})
    return tags


def backfill_self_hashes(client, parent_run_id: str, root: Path) -> int:
    """Give earlier stage runs of this pipeline run their own `dvc.lock.self` once DVC has written it.

    Called once DVC has locked the stages that ran (by the next stage under `dvc repro`, by the flow after
    `dvc commit`), so the entry of a FINISHED sibling run is the one its outputs produced. Returns the count."""
    hashes = stage_lock_hashes(root)
    if not hashes:
        return 0
    runs = client.search_runs(
        experiment_ids=[client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
        max_results=500)
    n = 0
    for run in runs:
        tags = run.data.tags
        stage = tags.get("gapo.stage")
        if not stage or "dvc.lock.self" in tags or stage not in hashes:
            continue
        client.set_tag(run.info.run_id, "dvc.lock.self", hashes[stage])
        n += 1
    return n


# -- the `gapo lineage` report -------------------------------------------------------------------
def resolve_version(client, uri: str):
    """`models:/name@alias`, `models:/name/version` or `name@alias` -> ModelVersion."""
    from gapo.errors import GapoError

    spec = uri[len("models:/"):] if uri.startswith("models:/") else uri
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = spec.partition("/")
        if not version:
            raise GapoError(f"lineage {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
        return client.get_model_version(name, version)
    except GapoError:
        raise
    except Exception as exc:  # noqa: BLE001 (MlflowException: unknown model, alias or version)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GapoError(f"lineage {uri!r}: {msg}") from None


def lineage_report(client, uri: str) -> dict[str, Any]:
    mv = resolve_version(client, uri)
    tags = dict(mv.tags or {})
    report: dict[str, Any] = {
        "model": {"name": mv.name, "version": mv.version, "aliases": list(getattr(mv, "aliases", []) or []),
                  "source": mv.source, "model_id": getattr(mv, "model_id", None), "run_id": mv.run_id},
        "gate": {k[len("gate."):]: v for k, v in sorted(tags.items()) if k.startswith("gate.")},
        "eval": {k[len("eval."):]: v for k, v in sorted(tags.items()) if k.startswith("eval.")},
    }
    run = client.get_run(mv.run_id) if mv.run_id else None
    if run is not None:
        rtags = run.data.tags
        report["run"] = {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                         "experiment_id": run.info.experiment_id}
        parent_id = rtags.get("mlflow.parentRunId")
        if parent_id:
            parent = client.get_run(parent_id)
            report["pipeline_run"] = {"run_id": parent_id, "name": parent.info.run_name,
                                      "status": parent.info.status,
                                      "trigger": parent.data.tags.get("gapo.trigger")}
            stages = client.search_runs([run.info.experiment_id],
                                        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=500)
            report["stage_runs"] = sorted(
                ({"stage": s.data.tags.get("gapo.stage"), "round": s.data.tags.get("gapo.round"),
                  "run_id": s.info.run_id, "status": s.info.status} for s in stages),
                key=lambda r: (r["stage"] or "", r["round"] or ""))
    report["prefect"] = {k[len("prefect."):]: v for k, v in tags.items() if k.startswith("prefect.")}
    report["git"] = {k[len("git."):]: v for k, v in tags.items() if k.startswith("git.")}
    report["dvc"] = {
        "stages": {k[len("dvc.lock."):]: v for k, v in sorted(tags.items()) if k.startswith("dvc.lock.")},
        "outs": {k[len("dvc.out."):]: v for k, v in sorted(tags.items()) if k.startswith("dvc.out.")},
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    m = r["model"]
    lines = [f"model     {m['name']} version {m['version']}"
             + (f"  aliases: {', '.join(m['aliases'])}" if m["aliases"] else "")]
    lines.append(f"          source {m['source']}")
    if r["gate"]:
        g = r["gate"]
        lines.append(f"gate      {g.get('verdict', '?')}: {g.get('reasons', '')}")
    if r["eval"]:
        lines.append("eval      " + ", ".join(f"{k}={v}" for k, v in r["eval"].items()))
    if "run" in r:
        run = r["run"]
        lines.append(f"run       {run['run_id']} '{run['name']}' ({run['status']}), experiment {run['experiment_id']}")
    if "pipeline_run" in r:
        p = r["pipeline_run"]
        lines.append(f"pipeline  {p['run_id']} '{p['name']}' ({p['status']}), trigger {p['trigger'] or '?'}")
        for s in r.get("stage_runs", []):
            label = s["stage"] + (f" round {s['round']}" if s["round"] else "")
            lines.append(f"          - {label:<22} {s['run_id']} {s['status']}")
    pf = r["prefect"]
    lines.append("prefect   " + (f"flow run {pf.get('flow_run_id')} '{pf.get('flow_run_name', '')}'"
                                 + (f" {pf['flow_run_url']}" if pf.get("flow_run_url") else "")
                                 if pf.get("flow_run_id") else "none (not started by a Prefect flow)"))
    g = r["git"]
    if g:
        lines.append(f"git       {g.get('commit')}" + (" (dirty)" if g.get("dirty") == "true" else ""))
    lines.append("dvc       stage hashes (md5 of each dvc.lock entry):")
    for stage, h in r["dvc"]["stages"].items():
        lines.append(f"          {stage:<22} {h}")
    if r["dvc"]["outs"]:
        lines.append("          data and checkpoints:")
        for path, h in r["dvc"]["outs"].items():
            lines.append(f"          {path:<36} {h}")
    return "\n".join(lines)
