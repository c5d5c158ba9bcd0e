"""The `prepare` stage: user files validated, corpus generated, pairs built and verified, everything written.

    params -> split plan -> one Job per prompt -> build_example (reference, SFT, PP, RM, PR, IFEval records)
           -> data/<kind>/<split>.jsonl, data/hf/<kind>/ (DatasetDict), data/stats.json, metrics/prepare.json

All of data/ is built in a temporary directory and swapped in by `atomic_dir`, so a bad user file or a crash
leaves the previous data/ (or none) in place, never a mix. Jobs are independent, so they run in
`data.workers` processes; output order is the job order, so the bytes do not depend on the worker count.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Iterable

from gapo.config import Params
from gapo.data import catalog, schema, splits
from gapo.data import constraints as C
from gapo.data.corpus import seeded_rng
from gapo.data.loaders import USER_KINDS, load_user_data
from gapo.data.pairs import Example, Job, build_example
from gapo.io import atomic_dir, write_json, write_jsonl
from gapo.paths import SPLITS, Workspace

# Entries of data/ this stage owns; anything else found there (DVC's .gitignore) is carried over.
OWNED = set(schema.KINDS) | {"hf", "stats.json"}


def make_jobs(params: Params, plan: splits.SplitPlan) -> list[Job]:
    cfg, seed = params.data, params.seed
    jobs: list[Job] = []
    key = 0
    seen = plan.seen_categories
    for i in range(cfg.num_products):
        pid = f"p{i:06d}"
        split = "validation" if splits.is_validation(seed, pid, cfg.validation_fraction) else "train"
        for j in range(cfg.prompts_per_product):
            k = seeded_rng(seed, "num-constraints", pid, j).randint(cfg.min_constraints, cfg.max_constraints)
            jobs.append(Job(seed, key, split, pid, seen[i % len(seen)], k, plan.train_policy))
            key += 1
    held_pairs = list(plan.held_out_pairs)
    for i in range(cfg.test_prompts):
        pid = f"t{i:06d}"
        rng = seeded_rng(seed, "test-prompt", i)
        k = rng.randint(cfg.min_constraints, cfg.max_constraints)
        # Half from unseen categories; half from seen categories with an unseen instruction pair (needs k >= 2).
        if i % 2 == 0 or cfg.max_constraints < 2:
            held = plan.held_out_categories
            jobs.append(Job(seed, key, "test", pid, held[(i // 2) % len(held)], k, plan.test_policy,
                            train_values_only=False))
        else:
            pair = rng.choice(held_pairs)
            jobs.append(Job(seed, key, "test", pid, rng.choice(seen), max(k, 2), plan.test_policy,
                            seed_ids=tuple(pair), train_values_only=False))
        key += 1
    return jobs


def _progress(it: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with datasets/transformers
        return it
    return tqdm(it, total=total, desc=desc, unit="prompt", mininterval=2.0, leave=False)


def run_jobs(jobs: list[Job], workers: int) -> list[Example]:
    C.registry()  # load the checkers once, before forking, so workers inherit them
    if workers <= 1 or len(jobs) < 200 or "fork" not in multiprocessing.get_all_start_methods():
        return list(_progress(map(build_example, jobs), len(jobs), "prepare"))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        return list(_progress(pool.imap(build_example, jobs, chunksize=32), len(jobs), "prepare"))


def _collect(examples: list[Example]) -> dict[str, dict[str, list[dict]]]:
    out = {kind: {s: [] for s in SPLITS} for kind in schema.KINDS}
    for ex in examples:
        for kind in ("sft", "ifeval", "pp", "pr"):
            rec = getattr(ex, kind)
            if rec is not None:
                out[kind][ex.split].append(rec)
        out["rm"][ex.split].extend(ex.rm)
    return out


def _stats(records: dict, examples: list[Example], plan: splits.SplitPlan, params: Params, sources: dict) -> dict:
    drops = collections.Counter()
    for ex in examples:
        drops.update(ex.counts)
    per_type = {}
    for s in SPLITS:
        c = collections.Counter(i for r in records["ifeval"][s] for i in r["instruction_id_list"])
        per_type[s] = {iid: c[iid] for iid in sorted(c)}
    perturb = {}
    for s in SPLITS:
        c = collections.Counter((r["perturbation"], r["perturbed_instruction_id"]) for r in records["pp"][s])
        perturb[s] = {kind: {iid: c[(kind, iid)] for iid in sorted({i for k, i in c if k == kind})}
                      for kind in sorted({k for k, _ in c})}
    broken = {s: dict(sorted(collections.Counter(r["broken_instruction_id"] for r in records["pr"][s]).items()))
              for s in SPLITS}
    lengths = [len(r["completion"].split()) for s in SPLITS for r in records["sft"][s]]
    longest = max((len(r["prompt"].split()) + len(r["completion"].split()) for s in SPLITS
                   for r in records["sft"][s]), default=0)
    used_pairs = {(a, v) for s in SPLITS for r in records["sft"][s]
                  for line in r["prompt"].split("\nRequirements:")[0].split("\n")[1:] if ": " in line
                  for a, v in [line.split(": ", 1)] if a not in ("Product", "Brand", "Category")}
    return {
        "seed": params.seed,
        "sources": sources,
        "counts": {kind: {s: len(records[kind][s]) for s in SPLITS} for kind in schema.KINDS},
        "constraint_types": per_type,
        "perturbations": perturb,
        "pr_broken_instruction": broken,
        "drops": {
            "constraint_sampling_failed": drops["sampling_failed"],
            "writer_gave_up": drops["writer_gave_up"],
            "reference_failed_check": drops["reference_failed_check"],
            "prompts_without_reference": drops["prompt_dropped"] + drops["sampling_failed"],
            "pp_no_failing_perturbation": drops["pp_failed"],
            "pr_no_breaking_rewrite": drops["pr_failed"],
        },
        "jobs": len(examples),
        "categories": {"total": len(catalog.CATEGORIES), "held_out": list(plan.held_out_categories)},
        "attribute_value_pairs": {"catalogue": len(catalog.distinct_attribute_values()),
                                  "used_in_prompts": len(used_pairs)},
        "reference_words": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                            "mean": round(statistics.fmean(lengths), 2) if lengths else 0},
        "longest_prompt_plus_reference_words": longest,
        "split_plan": plan.to_json(),
    }


def _save_hf(root: Path, records: dict) -> None:
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    for kind in schema.KINDS:
        feats = schema.hf_features(kind)
        # Arrow tables straight from the records: 5x faster than Dataset.from_list's per-row encoding, fills
        # absent kwargs keys with null, and handles an empty split. The fingerprint is a hash of the table, so
        # the saved files are byte-identical for identical records.
        dd = datasets.DatasetDict({
            s: datasets.Dataset(pa.Table.from_pylist(records[kind][s], schema=feats.arrow_schema),
                                info=datasets.DatasetInfo(features=feats))
            for s in SPLITS})
        dd.save_to_disk(str(root / "hf" / kind))


def _carry_over(old: Path, new: Path) -> None:
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name not in OWNED:
            dst = new / entry.name
            if entry.is_dir():
                shutil.copytree(entry, dst, symlinks=True)
            else:
                shutil.copy2(entry, dst)


def run_prepare(params: Params, ws: Workspace) -> dict:
    cfg = params.data
    t0 = time.time()
    # User files first: a bad file fails in seconds, before any generation, and nothing is written.
    user = load_user_data(cfg.user, params.seed, cfg.validation_fraction)
    plan = splits.make_split_plan(params.seed, cfg.held_out_categories)
    jobs = make_jobs(params, plan)
    workers = cfg.workers or (os.cpu_count() or 1)
    examples = run_jobs(jobs, workers)
    records = _collect(examples)
    sources = {kind: "generated" for kind in schema.KINDS}
    for kind, by_split in user.items():
        records[kind] = by_split
        param = next(p for p, k in USER_KINDS.items() if k == kind)
        sources[kind] = f"user:{getattr(cfg.user, param)}"
        if kind == "pp":
            from gapo.data.pairs import rm_records

            records["rm"] = {s: [row for pp in by_split[s] for row in rm_records(pp)] for s in SPLITS}
            sources["rm"] = "derived from user pp"
    stats = _stats(records, examples, plan, params, sources)
    gen_seconds = time.time() - t0
    with atomic_dir(ws.data) as tmp:
        for kind in schema.KINDS:
            for s in SPLITS:
                (tmp / kind).mkdir(parents=True, exist_ok=True)
                write_jsonl(tmp / kind / f"{s}.jsonl", records[kind][s])
        _save_hf(tmp, records)
        write_json(tmp / "stats.json", stats)
        _carry_over(ws.data, tmp)
    seconds = time.time() - t0
    flat = {f"{kind}_{s}": n for kind, by in stats["counts"].items() for s, n in by.items()}
    flat.update({f"drop_{k}": v for k, v in stats["drops"].items()})
    flat.update({"seconds": round(seconds, 2), "generation_seconds": round(gen_seconds, 2), "workers": workers})
    write_json(ws.metrics_file("prepare"), flat)
    return {"data": str(ws.data), "seconds": round(seconds, 2), "counts": stats["counts"], "drops": stats["drops"]}
