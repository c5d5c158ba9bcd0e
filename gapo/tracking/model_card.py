"""Model cards: the README.md of every registered policy and reward-model version, and its registry description.

`render_model_card` is pure (the card's facts in, markdown out): base model, lineage (git commit, DVC hashes of the
data, checkpoints and params, the Prefect flow run), the evaluation with the paired final-vs-SFT comparison (the
`vs_sft` block of metrics/evaluate.json), the promotion verdict, known limits and intended use. A version without
an evaluation gets a card saying so. `registry_description` fits a card into the registry's description field.

`card_facts` gathers the facts from the workspace; `log_model_cards` renders one card per registered version,
uploads it as README.md into the version's logged model (what `mlflow models serve` users download) and sets it as
the version's description (what the registry UI shows first). Everything written goes through `redact_text`:
a URI with `user:password@` (a Prefect flow-run URL, a model spec) never reaches the card.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gapo.redaction import redact_text

PAPER = "GAPO (arXiv 2503.20194)"
# ModelVersion.description is VARCHAR(5000) in MLflow's SQL registry schema; SQLite ignores the bound, PostgreSQL
# (infra/postgres) rejects a longer string, so the description is trimmed to it and the full card stays README.md.
DESCRIPTION_LIMIT = 5000
TRIM_NOTE = ("\n\n*Trimmed to the registry's {limit}-character description limit; the full card is this version's "
             "`README.md` artifact.*\n")
PAIRED_ROWS = (("prompt_level_strict_acc", "prompt-level strict"), ("prompt_level_loose_acc", "prompt-level loose"),
               ("inst_level_strict_acc", "instruction-level strict"), ("inst_level_loose_acc", "instruction-level loose"))
RM_ROWS = (("rm_accuracy", "pair accuracy"), ("rm_auc", "AUC"), ("rm_loss", "loss"))
# builtin generators trained from scratch on the synthetic corpus: pipeline fixtures, not language models
FROM_SCRATCH = ("builtin:llama-tiny", "builtin:llama-small", "builtin:bert-tiny")


# ============================================================================================ rendering (pure)
def _pct(x: Any) -> str:
    return "–" if not _finite(x) else f"{100 * float(x):.1f}%"


def _pt(x: Any) -> str:
    return "–" if not _finite(x) else f"{100 * float(x):+.1f}"


def _p(x: Any) -> str:
    if not _finite(x):
        return "–"
    return "<0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, digits: int = 4) -> str:
    return f"{float(x):.{digits}g}" if _finite(x) else "–"


def _count(n: Any) -> str:
    if not isinstance(n, int):
        return "unknown"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:,}"


def _base_section(base: Mapping[str, Any]) -> list[str]:
    lines = ["## Base model", ""]
    lines.append(f"- Base: `{base.get('spec') or 'unknown'}`")
    lines.append(f"- Parameters: {_count(base.get('parameters'))}"
                 + (f" ({base['architecture']})" if base.get("architecture") else ""))
    if base.get("weights"):
        lines.append(f"- Weights: {base['weights']}")
    for note in base.get("notes") or []:
        lines.append(f"- {note}")
    return lines + [""]


def _training_section(training: Mapping[str, Any]) -> list[str]:
    if not training:
        return []
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in training.items()]
    return lines + [""]


def _lineage_section(lineage: Mapping[str, Any]) -> list[str]:
    tags = lineage.get("tags") or {}
    lines = ["## Lineage", ""]
    commit = tags.get("git.commit")
    lines.append(f"- Code: git `{commit}`" + (" (uncommitted changes)" if tags.get("git.dirty") == "true" else "")
                 if commit else "- Code: no git commit recorded")
    if lineage.get("params_md5"):
        lines.append(f"- Params: md5 `{lineage['params_md5']}` of the merged params (params.yaml + profile + "
                     "overrides, as validated by gapo/config.py)")
    if tags.get("prefect.flow_run_id"):
        name = tags.get("prefect.flow_run_name")
        lines.append(f"- Prefect flow run: `{tags['prefect.flow_run_id']}`" + (f" ({name})" if name else ""))
    else:
        lines.append("- Prefect flow run: none (not started by a Prefect flow)")
    if lineage.get("run_id"):
        lines.append(f"- MLflow register run: `{lineage['run_id']}`"
                     + (f", pipeline run `{lineage['pipeline_run_id']}`" if lineage.get("pipeline_run_id") else ""))
    outs = {k[len("dvc.out."):]: v for k, v in sorted(tags.items()) if k.startswith("dvc.out.")}
    stages = {k[len("dvc.lock."):]: v for k, v in sorted(tags.items()) if k.startswith("dvc.lock.")}
    if outs:
        lines += ["", "DVC hashes of the data and checkpoints (dvc.lock):", "", "| path | md5 |", "|---|---|"]
        lines += [f"| `{path}` | `{h}` |" for path, h in outs.items()]
    if stages:
        lines += ["", "DVC stage entries (md5 of each stage's dvc.lock entry: its deps, params and outs):", "",
                  "| stage | md5 |", "|---|---|"]
        lines += [f"| {stage} | `{h}` |" for stage, h in stages.items()]
    if not outs and not stages:
        lines.append("- DVC: no dvc.lock at registration (the stages were not run by `dvc repro`)")
    return lines + [""]


def _paired_table(vs: Mapping[str, Any]) -> list[str]:
    lines = ["| metric | final | SFT | Δ (pt) | 95% CI of Δ (pt) | p (bootstrap) | p (McNemar) |",
             "|---|---|---|---|---|---|---|"]
    for key, label in PAIRED_ROWS:
        c = vs.get(key) or {}
        ci = f"[{_pt(c.get('ci95_low'))}, {_pt(c.get('ci95_high'))}]"
        lines.append(f"| {label} | {_pct(c.get('final'))} | {_pct(c.get('sft'))} | {_pt(c.get('delta'))} | {ci} | "
                     f"{_p(c.get('p_bootstrap'))} | {_p(c.get('p_mcnemar')) if 'p_mcnemar' in c else 'n/a'} |")
    lines.append("")
    lines.append(f"n = {vs.get('n_prompts', '?')} prompts, {vs.get('n_instructions', '?')} instructions; intervals: "
                 f"paired bootstrap over prompts ({vs.get('resamples', '?')} resamples, seed {vs.get('seed', '?')}); "
                 "McNemar: exact test of the discordant prompts (docs/evaluation.md).")
    return lines


def _evaluation_section(evaluation: Mapping[str, Any] | None, role: str) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evaluation:
        return lines + ["**Not evaluated yet.** No metrics/evaluate.json was found for this version: its quality is "
                        "unknown. Run `gapo evaluate` (or `dvc repro evaluate`) and register again.", ""]
    prompts = (f"Held-out IFEval-format prompts `{evaluation.get('input', '?')}`, model "
               f"`{evaluation.get('model', '?')}` ({evaluation.get('num_prompts', '?')} prompts, "
               f"{evaluation.get('num_instructions', '?')} instructions, strict and loose as in IFEval).")
    if role == "reward_model":
        rm = [(label, evaluation.get(key)) for key, label in RM_ROWS if key in evaluation]
        if rm:
            lines += [f"On {evaluation.get('rm_n', '?')} preferential-prompt test rows:", "",
                      "| RM metric | value |", "|---|---|"]
            lines += [f"| {label} | {_num(v)} |" for label, v in rm] + [""]
        else:
            lines += ["Reward-model accuracy was not measured "
                      f"({(evaluation.get('skipped') or {}).get('rm_accuracy', 'no rm_accuracy')}).", ""]
        lines += ["The policy trained against this reward model:", ""]
    lines += [prompts, ""]
    vs = evaluation.get("vs_sft")
    if vs:
        lines += ["Final policy against its SFT starting point, the same prompts and decoding (paired):", ""]
        lines += _paired_table(vs)
    else:
        why = (evaluation.get("skipped") or {}).get("vs_sft") or "evaluate.compare_sft was off"
        lines += [f"No paired comparison with the SFT policy ({why}). Final policy alone:", "",
                  "| metric | final |", "|---|---|"]
        lines += [f"| {label} | {_pct(evaluation.get(key))} |" for key, label in PAIRED_ROWS]
    extra = [(k, evaluation.get(k)) for k in ("kl_to_sft", "mean_response_tokens", "stopped_fraction")
             if _finite(evaluation.get(k))]
    if extra:
        lines += ["", "Also: " + ", ".join(f"{k} {_num(v)}" for k, v in extra) + "."]
    return lines + [""]


def _gate_section(gate: Mapping[str, Any] | None) -> list[str]:
    if not gate:
        return []
    return ["## Promotion gate at registration", "",
            f"{gate.get('verdict', '?')}: {gate.get('reasons', '')} (aliases move later; ask the registry for the "
            "current `champion`).", ""]


def _limits(role: str, base: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
            hack_gap: float | None) -> list[str]:
    lines = ["## Known limits", ""]
    if base.get("spec") in FROM_SCRATCH:
        lines.append(f"- `{base['spec']}` is trained from scratch on the synthetic corpus: a pipeline test fixture, "
                     "not a usable language model.")
    lines.append("- Trained and evaluated on synthetic product-description prompts with verifiable IFEval-style "
                 "constraints (docs/data.md), in English; other tasks and languages are untested.")
    vs = (evaluation or {}).get("vs_sft") or {}
    cell = vs.get("prompt_level_strict_acc") or {}
    if _finite(cell.get("ci95_low")) and _finite(cell.get("ci95_high")):
        if cell["ci95_low"] <= 0 <= cell["ci95_high"]:
            lines.append(f"- The policy's prompt-level strict gain over SFT is not distinguishable from zero on "
                         f"{vs.get('n_prompts', '?')} prompts (95% CI [{_pt(cell['ci95_low'])}, "
                         f"{_pt(cell['ci95_high'])}] pt).")
    elif evaluation is None:
        lines.append("- Not evaluated: nothing is known about its constraint following.")
    if role == "policy":
        lines.append("- No safety or harmlessness tuning beyond the base model's; it can state false product facts.")
    else:
        lines.append("- The score is a discriminator trained adversarially against the policy's samples "
                     "(arXiv 2503.20194): it is not calibrated, and a high score is not a verifier pass.")
    if _finite(hack_gap):
        lines.append(f"- Reward hacking: last round's hack_gap (RM score vs verifier pass rate) was {_num(hack_gap)}.")
    return lines + [""]


def _intended_use(role: str, name: str, version: str) -> list[str]:
    uri = f"models:/{name}/{version}"
    if role == "policy":
        return ["## Intended use", "",
                f"Research and reproduction of {PAPER}: writing product descriptions that follow explicit "
                "constraints (length, keywords, format). Not for production text without review.", "",
                f"Serve: `mlflow models serve -m {uri}`; input a list of raw prompts (the chat template is "
                "applied by the model's `prompt_template`), per-request params `max_new_tokens`, `do_sample`, "
                "`temperature`, `top_p`.", ""]
    return ["## Intended use", "",
            f"Scoring (prompt, response) pairs for constraint adherence in {PAPER} training and evaluation. Not a "
            "general preference or safety reward model.", "",
            f"Serve: `mlflow models serve -m {uri}`; input a table with `prompt` and `response` columns, output "
            "`score` and `logit` (param `score`: `prob` or `logit`).", ""]


def render_model_card(role: str, name: str, version: str, base: Mapping[str, Any], training: Mapping[str, Any],
                      lineage: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
                      gate: Mapping[str, Any] | None = None, hack_gap: float | None = None) -> str:
    """The markdown card of registered version `name`/`version`.

    role: "policy" or "reward_model". base: {spec, parameters, architecture, weights, notes}. training: setting ->
    value rows. lineage: {tags (the version's git./dvc./prefect. tags), params_md5, run_id, pipeline_run_id}.
    evaluation: metrics/evaluate.json, or None when there is none. gate: {verdict, reasons}."""
    if role not in ("policy", "reward_model"):
        raise ValueError(f"role must be 'policy' or 'reward_model', got {role!r}")
    what = "policy (generator)" if role == "policy" else "reward model (encoder classifier)"
    lines = [f"# {name} version {version}", "",
             f"The {what} of a {PAPER} pipeline run: adversarial rounds in which the reward model learns to tell "
             "the policy's samples from constraint-satisfying responses and the policy is trained by PPO against "
             "it (docs/method.md).", ""]
    lines += _base_section(base)
    lines += _training_section(training)
    lines += _evaluation_section(evaluation, role)
    lines += _gate_section(gate)
    lines += _limits(role, base, evaluation, hack_gap)
    lines += _intended_use(role, name, version)
    lines += _lineage_section(lineage)
    return redact_text("\n".join(lines).rstrip() + "\n")


def registry_description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """`card` as a ModelVersion description: whole when it fits in `limit` characters, else cut after the last
    whole section (`## ...`) that fits, with a note pointing at README.md."""
    if len(card) <= limit:
        return card
    note = TRIM_NOTE.format(limit=limit)
    budget = limit - len(note)
    cut = card.rfind("\n## ", 0, budget)
    head = card[:cut] if cut > 0 else card[:budget]
    return head.rstrip() + note


# ============================================================================================ facts (I/O)
def safetensors_parameters(model_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights loaded); None without safetensors files."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, meta in header.items():
            if key != "__metadata__":
                total += math.prod(meta["shape"])
    return total


def _architecture(model_dir: Path) -> str | None:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    parts = [cfg.get("model_type") or "?"]
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden")):
        if key in cfg:
            parts.append(f"{cfg[key]} {label}")
    return ", ".join(parts)


def _shown_spec(spec: str) -> str:
    """A local absolute path as its last two parts: cards carry no machine paths."""
    if spec.startswith("/"):
        return "…/" + "/".join(Path(spec).parts[-2:])
    return spec


def params_md5(params) -> str:
    return hashlib.md5(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def card_facts(params, ws, role: str) -> tuple[dict, dict]:
    """(base, training) for `role` from params and the final checkpoint of the workspace."""
    m = params.models
    model_dir = ws.final / ("policy" if role == "policy" else "reward")
    spec = m.policy if role == "policy" else m.reward
    notes = []
    if role == "policy":
        notes.append("LoRA adapters merged into the weights" if m.lora.enabled else "every weight fine-tuned")
    base = {"spec": _shown_spec(spec), "parameters": safetensors_parameters(model_dir),
            "architecture": _architecture(model_dir),
            "weights": f"safetensors, {m.dtype}, trust_remote_code {'on' if m.trust_remote_code else 'off'}",
            "notes": notes}
    train_seed = params.train_seed if params.train_seed is not None else params.seed
    training = {"method": params.method, "paradigm": params.paradigm, "seed / train_seed": f"{params.seed} / {train_seed}",
                "SFT steps": params.sft.max_steps, "RM warm-up examples": params.reward.warmup_examples or "all",
                "adversarial rounds": params.adversarial.rounds,
                "PPO rollouts per round": params.ppo.rollout_batch_size * params.ppo.n_samples_per_prompt
                * params.ppo.episodes_per_round,
                "precision / ZeRO stage": f"{params.deepspeed.precision} / {params.deepspeed.zero_stage}"}
    return base, training


def log_model_cards(client, params, ws, versions: Mapping[str, str], model_ids: Mapping[str, str],
                    tags: Mapping[str, str], evaluation: Mapping[str, Any] | None,
                    gate: Mapping[str, Any] | None = None, hack_gap: float | None = None,
                    run_id: str | None = None, pipeline_run_id: str | None = None) -> dict[str, str]:
    """Render, upload (README.md in each version's logged model) and set as description one card per version.

    versions / model_ids: {registered name: version / logged model id}. Returns {registered name: card}."""
    roles = {params.registry.policy_name: "policy", params.registry.reward_model_name: "reward_model"}
    lineage = {"tags": dict(tags), "params_md5": params_md5(params), "run_id": run_id,
               "pipeline_run_id": pipeline_run_id}
    cards = {}
    for name, version in versions.items():
        role = roles[name]
        base, training = card_facts(params, ws, role)
        card = render_model_card(role, name, str(version), base, training, lineage, evaluation, gate, hack_gap)
        with tempfile.TemporaryDirectory(prefix="gapo-card-") as tmp:
            path = Path(tmp) / "README.md"
            path.write_text(card, encoding="utf-8")
            client.log_model_artifact(model_ids[name], str(path))
        client.update_model_version(name, str(version), description=registry_description(card))
        cards[name] = card
    return cards
