"""The paper's claims tested on a `gapo compare` grid, prompt by prompt (reports/compare.md, "The paper's claims").

Gu et al. 2025 (arXiv 2503.20194) report one number per method: Table 4, IFEval overall accuracy (GAPO 83.9, SFT
78.3, PPO 75.6, KTO 54.4, ORPO 33.9, DPO 33.3, SimPO 30.6), and Table 6, Preferential Prompt vs Preferential
Response data on PDD (GAPO 95.4 vs 82.9, PPO 89.4 vs 78.5). Every pair of methods in the grid is read as the claim
"the one the paper ranks higher beats the other", and every method as "PP beats PR"; each claim is tested on the
grid's own answers, every experiment's reports/eval_samples.jsonl, paired by test prompt and train seed.

Pure functions (records and sample rows in, numbers out):
- `per_prompt(rows, metric)`: {key: (passed, total)}: prompt level (0 or 1, 1); instruction level (instructions
  followed, instructions of the prompt).
- `paired_delta(a, b, ...)`: a and b are {seed: {key: (passed, total)}}; over the seeds and prompts both have,
  Δ = Σ(passed_a − passed_b) / Σ total. Interval and p-value: `gapo.eval.paired.paired_bootstrap` with the prompt
  as the resampling unit, its pairs from every seed kept together (one prompt's answers are correlated across
  seeds). Prompt-level metrics add the exact McNemar test over all (seed, prompt) pairs; with one seed the two
  agree in what they test, with several the bootstrap is the one to read (McNemar takes the pairs as independent).
- `holm(ps)`: Holm's step-down adjustment (family-wise error over all claims of one report).
- `build_claims(records, samples, ...)`: the method-order and the PP-vs-PR claims, each with its verdict at `alpha`
  on the Holm-adjusted p: "holds" (Δ > 0), "reversed" (Δ < 0), or "inside the noise".
- `pooled_cells(...)`: each (paradigm, method)'s accuracy over all its seeds and prompts, with the same
  prompt-clustered bootstrap interval: the "n and interval per cell" that a t-interval over 1 to 3 seeds cannot give.
- `summarize(claims)`: one verdict per paper claim (GAPO beats every baseline; the baselines' order; PP beats PR):
  "holds" when every comparison under it holds, "fails" when any is reversed, otherwise "unresolved".
- `render_claims(claims)`: the markdown section, the per-claim paragraphs first.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from gapo.eval.paired import mcnemar_exact, paired_bootstrap

# Gu et al. 2025, Table 4 (IFEval overall, %) and Table 6 (PDD, %, 6,600 training samples: PP, PR)
PAPER_IFEVAL = {"gapo": 83.9, "sft": 78.3, "ppo": 75.6, "kto": 54.4, "orpo": 33.9, "dpo": 33.3, "simpo": 30.6}
PAPER_PP_VS_PR = {"gapo": (95.4, 82.9), "ppo": (89.4, 78.5)}

# metrics/evaluate.json key -> the eval_samples.jsonl field it aggregates
_PROMPT_FIELDS = {"prompt_level_strict_acc": "follow_all_instructions_strict",
                  "prompt_level_loose_acc": "follow_all_instructions_loose"}
_INST_FIELDS = {"inst_level_strict_acc": "follow_instruction_list_strict",
                "inst_level_loose_acc": "follow_instruction_list_loose"}

Runs = Mapping[int, Mapping[str, tuple[int, int]]]  # seed -> prompt key -> (passed, total)

# (id, the claim in words, which rows of build_claims test it)
PAPER_CLAIMS = (
    ("gapo_beats_all", "GAPO beats every other method (Table 4)",
     lambda r: r["kind"] == "method_order" and r["a"] == "gapo"),
    ("baseline_order", "The baselines rank SFT > PPO > KTO > DPO (Table 4)",
     lambda r: r["kind"] == "method_order" and r["a"] != "gapo"),
    ("pp_beats_pr", "Preferential Prompt data beats Preferential Response data for the same method (Table 6)",
     lambda r: r["kind"] == "pp_vs_pr"),
)


def per_prompt(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, tuple[int, int]]:
    """{key: (passed, total)} of one experiment's eval_samples rows for `metric` (a metrics/evaluate.json key)."""
    if metric in _PROMPT_FIELDS:
        field = _PROMPT_FIELDS[metric]
        return {str(r["key"]): (int(bool(r[field])), 1) for r in rows}
    if metric in _INST_FIELDS:
        field = _INST_FIELDS[metric]
        return {str(r["key"]): (sum(bool(x) for x in r[field]), len(r[field])) for r in rows if r[field]}
    raise ValueError(f"no per-prompt form of metric {metric!r}; one of {sorted({**_PROMPT_FIELDS, **_INST_FIELDS})}")


def paired_delta(a: Runs, b: Runs, resamples: int = 10_000, seed: int = 0, level: float = 0.95,
                 mcnemar: bool = True) -> Optional[dict[str, Any]]:
    """A − B over the (seed, prompt) pairs both have; None when they share none."""
    seeds = sorted(set(a) & set(b))
    diff: dict[str, float] = {}
    weight: dict[str, float] = {}
    a_pass = b_pass = a_only = b_only = pairs = 0
    for s in seeds:
        for key in sorted(set(a[s]) & set(b[s])):
            (pa, ta), (pb, tb) = a[s][key], b[s][key]
            if ta != tb:
                raise ValueError(f"prompt {key!r}, seed {s}: {ta} vs {tb} instructions; not the same test prompt")
            diff[key] = diff.get(key, 0.0) + pa - pb
            weight[key] = weight.get(key, 0.0) + ta
            a_pass, b_pass, pairs = a_pass + pa, b_pass + pb, pairs + 1
            a_only += pa > pb
            b_only += pb > pa
    if not diff:
        return None
    keys = sorted(diff)
    boot = paired_bootstrap([diff[k] for k in keys], [weight[k] for k in keys], resamples, seed, level)
    total = sum(weight.values())
    out = {"seeds": seeds, "n_prompts": len(keys), "n_pairs": pairs, "a_acc": a_pass / total, "b_acc": b_pass / total,
           "delta": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "p": boot["p_value"]}
    if mcnemar:
        out.update({"a_only": a_only, "b_only": b_only, "p_mcnemar": mcnemar_exact(a_only, b_only)})
    return out


def holm(ps: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def verdict(delta: float, p_adjusted: float, alpha: float) -> str:
    if p_adjusted < alpha:
        return "holds" if delta > 0 else "reversed"
    return "inside the noise"


def _runs(records: Iterable[Mapping[str, Any]], samples: Mapping[str, Mapping[str, tuple[int, int]]]
          ) -> dict[tuple[str, str], dict[int, Mapping[str, tuple[int, int]]]]:
    out: dict[tuple[str, str], dict[int, Mapping[str, tuple[int, int]]]] = {}
    for r in records:
        if r["name"] in samples:
            out.setdefault((r["method"], r["paradigm"]), {})[int(r["seed"])] = samples[r["name"]]
    return out


def pooled_cells(records: Iterable[Mapping[str, Any]], samples: Mapping[str, Mapping[str, tuple[int, int]]],
                 resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """[{paradigm, method, seeds, n_prompts, acc, ci_low, ci_high}]: passed / total over every (seed, prompt) of the
    cell; the interval resamples prompts with all their seeds (the same unit as `paired_delta`)."""
    out = []
    for (method, paradigm), by_seed in _runs(records, samples).items():
        passed: dict[str, float] = {}
        total: dict[str, float] = {}
        for runs in by_seed.values():
            for key, (p, t) in runs.items():
                passed[key] = passed.get(key, 0) + p
                total[key] = total.get(key, 0) + t
        keys = sorted(k for k in total if total[k] > 0)
        if not keys:
            continue
        boot = paired_bootstrap([passed[k] for k in keys], [total[k] for k in keys], resamples, seed, level)
        out.append({"paradigm": paradigm, "method": method, "seeds": sorted(by_seed), "n_prompts": len(keys),
                    "acc": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]})
    return sorted(out, key=lambda c: (c["paradigm"], -PAPER_IFEVAL.get(c["method"], -1), c["method"]))


def build_claims(records: Iterable[Mapping[str, Any]], samples: Mapping[str, Mapping[str, tuple[int, int]]],
                 metric: str, resamples: int = 10_000, seed: int = 0, alpha: float = 0.05,
                 level: float = 0.95) -> dict[str, Any]:
    """records: the grid's {method, paradigm, seed, name}; samples: {name: per_prompt(...)}. Returns {"metric",
    "alpha", "method_order": [row], "pp_vs_pr": [row]}; a row is {a, b, (paradigm | method), paper, **paired_delta,
    p_holm, verdict}. Holm's adjustment runs over every row of both lists."""
    runs = _runs(records, samples)
    mcnemar = metric in _PROMPT_FIELDS
    rows: list[dict[str, Any]] = []
    paradigms = sorted({p for _, p in runs})
    for paradigm in paradigms:
        methods = sorted((m for m, p in runs if p == paradigm and m in PAPER_IFEVAL), key=lambda m: -PAPER_IFEVAL[m])
        for i, hi in enumerate(methods):
            for lo in methods[i + 1:]:
                cell = paired_delta(runs[(hi, paradigm)], runs[(lo, paradigm)], resamples, seed, level, mcnemar)
                if cell:
                    rows.append({"kind": "method_order", "paradigm": paradigm, "a": hi, "b": lo,
                                 "paper": (PAPER_IFEVAL[hi], PAPER_IFEVAL[lo]), **cell})
    for method in sorted({m for m, _ in runs}):
        if method == "sft" or (method, "pp") not in runs or (method, "pr") not in runs:
            continue  # the SFT policy does not read the paradigm: PP and PR are the same model
        cell = paired_delta(runs[(method, "pp")], runs[(method, "pr")], resamples, seed, level, mcnemar)
        if cell:
            rows.append({"kind": "pp_vs_pr", "method": method, "a": "pp", "b": "pr",
                         "paper": PAPER_PP_VS_PR.get(method), **cell})
    for row, p in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = p
        row["verdict"] = verdict(row["delta"], p, alpha)
    return {"metric": metric, "alpha": alpha, "level": level, "resamples": resamples,
            "cells": pooled_cells(records, samples, resamples, seed, level),
            "method_order": [r for r in rows if r["kind"] == "method_order"],
            "pp_vs_pr": [r for r in rows if r["kind"] == "pp_vs_pr"]}


def summarize(claims: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[{id, claim, status, rows}] for each paper claim the grid tests (one with no row is left out)."""
    rows = list(claims["method_order"]) + list(claims["pp_vs_pr"])
    out = []
    for cid, text, tests in PAPER_CLAIMS:
        mine = [r for r in rows if tests(r)]
        if not mine:
            continue
        verdicts = {r["verdict"] for r in mine}
        status = "fails" if "reversed" in verdicts else "holds" if verdicts == {"holds"} else "unresolved"
        out.append({"id": cid, "claim": text, "status": status, "rows": mine})
    return out


def _label(r: Mapping[str, Any]) -> str:
    if r["kind"] == "pp_vs_pr":
        return f"{r['method']} PP > PR"
    return f"{r['a']} > {r['b']} ({r['paradigm'].upper()} data)"


def _paragraph(s: Mapping[str, Any]) -> str:
    counts = {v: sum(r["verdict"] == v for r in s["rows"]) for v in ("holds", "reversed", "inside the noise")}
    seeds = sorted({len(r["seeds"]) for r in s["rows"]})
    prompts = sorted({r["n_prompts"] for r in s["rows"]})
    evidence = "; ".join(f"{_label(r)} {_pct(r['delta'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}], Holm p "
                         f"{r['p_holm']:.2g} ({r['verdict']})" for r in s["rows"])
    n = f"n = {'–'.join(map(str, seeds))} seed{'s' if seeds[-1] > 1 else ''} × {'–'.join(map(str, prompts))} prompts"
    return (f"**{s['claim']}: {s['status']}.** {len(s['rows'])} comparisons: {counts['holds']} hold, "
            f"{counts['reversed']} reversed, {counts['inside the noise']} inside the noise ({n} each). "
            f"Δ in points [95% CI]: {evidence}.")


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}"


def _cells(r: Mapping[str, Any]) -> str:
    ci = f"{_pct(r['delta'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
    mc = f"{r['a_only']} / {r['b_only']}, {r['p_mcnemar']:.3g}" if "p_mcnemar" in r else "–"
    return (f"{len(r['seeds'])} × {r['n_prompts']} | {r['a_acc'] * 100:.1f} | {r['b_acc'] * 100:.1f} | {ci} "
            f"| {r['p']:.3g} | {r['p_holm']:.3g} | {mc} | **{r['verdict']}** |")


def render_claims(claims: Mapping[str, Any]) -> str:
    lines = ["## The paper's claims, tested prompt by prompt", "",
             f"Each row is one claim \"A beats B\" on `{claims['metric']}`: the paper's ranking (Gu et al. 2025, "
             "Table 4, IFEval overall %; Table 6, PDD %, PP vs PR) against this grid's answers. Δ = A − B over the "
             f"(train seed, test prompt) pairs both have (n = seeds × prompts); the {claims['level'] * 100:g}% "
             f"interval and p come from a paired bootstrap ({claims['resamples']} resamples) with the prompt as the "
             "unit, so one prompt's pairs from every seed stay together. Holm p adjusts p over all rows of this "
             "section; the verdict reads it at "
             f"α = {claims['alpha']:g}: **holds** (Δ > 0), **reversed** (Δ < 0) or **inside the noise**. A only / "
             "B only: the discordant pairs and the exact McNemar p over all pairs (it treats one prompt's seeds as "
             "independent pairs; with one seed it tests the same thing as the bootstrap).", "",
             "A paper claim **holds** when every comparison under it holds, **fails** when any is reversed, and is "
             "**unresolved** otherwise.", ""]
    for s in summarize(claims):
        lines += [_paragraph(s), ""]
    if claims.get("cells"):
        lines += [f"### Each cell pooled over its seeds ({claims['level'] * 100:g}% CI over prompts)", "",
                  "| data | method | n | % | CI |", "|---|---|---|---|---|"]
        for c in claims["cells"]:
            lines.append(f"| {c['paradigm']} | {c['method']} | {len(c['seeds'])} × {c['n_prompts']} | "
                         f"{c['acc'] * 100:.1f} | [{c['ci_low'] * 100:.1f}, {c['ci_high'] * 100:.1f}] |")
        lines.append("")
    if claims["method_order"]:
        lines += ["### Method order (Table 4: GAPO 83.9 > SFT 78.3 > PPO 75.6 > KTO 54.4 > DPO 33.3)", "",
                  "| data | A > B (paper) | n | A % | B % | Δ [95% CI] | p | Holm p | A only / B only, McNemar p "
                  "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in claims["method_order"]:
            lines.append(f"| {r['paradigm']} | {r['a']} > {r['b']} ({r['paper'][0]} vs {r['paper'][1]}) | "
                         + _cells(r))
        lines.append("")
    if claims["pp_vs_pr"]:
        lines += ["### Preferential Prompt beats Preferential Response (Table 6)", "",
                  "| method | PP > PR (paper) | n | PP % | PR % | Δ [95% CI] | p | Holm p | PP only / PR only, "
                  "McNemar p | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in claims["pp_vs_pr"]:
            paper = f"{r['paper'][0]} vs {r['paper'][1]}" if r["paper"] else "not reported"
            lines.append(f"| {r['method']} | {paper} | " + _cells(r))
        lines.append("")
    return "\n".join(lines)
