"""The evaluate stage: IFEval strict/loose accuracy of a policy's responses, plus model-health numbers.

Two modes (`gapo evaluate`):
- scoring only, `--responses R.jsonl`: score IFEval's own `input_response_data` file (`prompt`, `response`)
  against an IFEval-format input file (`--input`, else params.evaluate.input, else data/ifeval/<split>.jsonl),
  joined by prompt text. No model is loaded. Writes `--output` if given.
- generation (no `--responses`): generate on the input prompts with the policy (params.evaluate.model: a path
  or a `models:/name@alias` URI; default checkpoints/final/policy), score the responses, and add the reward
  model's accuracy/AUC on the test preferential-prompt pairs (data/rm/<split>.jsonl, RM from
  checkpoints/final/reward), the KL of the policy to the SFT reference (checkpoints/sft) on its own
  responses, and the mean response length. With `evaluate.compare_sft` (default) the SFT policy also answers the
  same prompts with the same decoding, and `vs_sft` holds the paired comparison (gapo.eval.paired; figure
  reports/paired_vs_sft.png). Writes metrics/evaluate.json (or `--output`) and reports/eval_samples.jsonl
  (or `--samples`).

The metrics file carries lm-eval's four key names at the top level, `by_instruction` / `by_category`
breakdowns (gapo.eval.scoring.aggregate), `randomised_kwargs` (arguments the checkers would have drawn at random,
scored with the draw seeded by the record key), in scoring-only mode `ignored_responses`, and in generation mode
`rm_*`, `kl_to_sft`, `mean_response_tokens` and `vs_sft`.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from gapo.config import Params
from gapo.errors import DataError, ModelError
from gapo.paths import Workspace


def resolve_input(params: Params, ws: Workspace, input_path: str | None) -> Path:
    """--input, else params.evaluate.input, else the prepared data/ifeval/<split>.jsonl."""
    chosen = input_path or params.evaluate.input
    path = Path(chosen) if chosen else ws.jsonl("ifeval", params.evaluate.split)
    if not path.exists():
        hint = "" if chosen else " (run `gapo prepare` first, or pass --input / -S evaluate.input=FILE)"
        raise DataError(f"IFEval input {path}: file not found{hint}")
    return path


def _shown(path: str | Path, ws: Workspace) -> str:
    """A path as written into metrics: relative to the workspace when inside it, so the file is the same in every
    checkout (DVC compares metrics files across experiments)."""
    try:
        return str(Path(path).resolve().relative_to(ws.root.resolve()))
    except ValueError:
        return str(path)


def sample_records(verdicts: list[dict], extra: dict[int, dict] | None = None) -> list[dict]:
    """reports/eval_samples.jsonl rows: the prompt, response and every verdict, one row per prompt."""
    rows = []
    for i, v in enumerate(verdicts):
        row = {"key": v["key"], "prompt": v["prompt"], "response": v["response"],
               "instruction_id_list": v["instruction_id_list"],
               "follow_all_instructions_strict": bool(v["prompt_level_strict_acc"]),
               "follow_all_instructions_loose": bool(v["prompt_level_loose_acc"]),
               "follow_instruction_list_strict": [bool(x) for x in v["inst_level_strict_acc"]],
               "follow_instruction_list_loose": [bool(x) for x in v["inst_level_loose_acc"]]}
        if extra and i in extra:
            row.update(extra[i])
        rows.append(row)
    return rows


def score_only(params: Params, ws: Workspace, input_path: str | None, responses_path: str,
               output: str | None, samples: str | None) -> dict:
    from gapo.eval.scoring import score_files
    from gapo.io import write_json, write_jsonl

    path = resolve_input(params, ws, input_path)
    report, verdicts = score_files(path, responses_path, params.data.user.max_line_bytes)
    report = {"mode": "score_only", "input": str(path), "responses": str(responses_path), **report}
    if report["ignored_responses"]:
        _note(f"{report['ignored_responses']} response(s) in {responses_path} answer prompts that {path} does not "
              "hold: ignored, as IFEval's evaluation_main ignores them")
    _note_randomised(report["randomised_kwargs"])
    if output:
        write_json(output, report)
    if samples:
        write_jsonl(samples, sample_records(verdicts))
    return report


def run_evaluate(params: Params, ws: Workspace, input_path: str | None = None, responses_path: str | None = None,
                 output: str | None = None, samples: str | None = None, compare_sft: bool | None = None) -> dict:
    """The `evaluate` stage: scoring only when `responses_path` is given, else generation (module docstring).
    `compare_sft` (the CLI's --compare-sft / --no-compare-sft) overrides params.evaluate.compare_sft."""
    if compare_sft is not None:
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"compare_sft": compare_sft})})
    if responses_path is not None:
        return score_only(params, ws, input_path, responses_path, output, samples)
    return generate_and_score(params, ws, input_path, output, samples)


# ------------------------------------------------------------------------------------------ generation mode
def token_kl(policy_logits, ref_logits):
    """Exact KL(pi || ref) of the next-token distributions at each position, in nats: `(B, T, V) x2 -> (B, T)`.

    Summed over the whole vocabulary rather than estimated from the sampled token (k1/k3), so it is the same
    number under greedy and sampled decoding.
    """
    import torch.nn.functional as F

    logp = F.log_softmax(policy_logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def _response_logits(model, sequences, attention_mask, prompt_len: int):
    """Logits that predict each response token: positions P-1 .. P+N-2 of the full sequence."""
    import inspect

    from gapo.train.sampler import position_ids_from_mask

    module = getattr(model, "module", model)
    n = sequences.size(1) - prompt_len
    kwargs = {"input_ids": sequences, "attention_mask": attention_mask,
              "position_ids": position_ids_from_mask(attention_mask), "use_cache": False}
    if "logits_to_keep" in inspect.signature(module.forward).parameters:
        kwargs["logits_to_keep"] = n + 1  # the (B, P+N, V) logits of long prompts are the memory peak otherwise
        return module(**kwargs).logits[:, :-1]
    return module(**kwargs).logits[:, prompt_len - 1:-1]


def kl_per_row(policy, reference, samples, micro_batch: int) -> tuple[list[float], list[float]]:
    """(mean per-token KL, summed KL) of each sampled row's response tokens, policy vs reference."""
    import torch

    from gapo.train.losses import masked_mean

    means: list[float] = []
    sums: list[float] = []
    with torch.no_grad():
        for start in range(0, samples.sequences.size(0), micro_batch):
            sl = slice(start, start + micro_batch)
            seq, mask, act = samples.sequences[sl], samples.attention_mask[sl], samples.action_mask[sl]
            kl = token_kl(_response_logits(policy, seq, mask, samples.prompt_len),
                          _response_logits(reference, seq, mask, samples.prompt_len))
            means += masked_mean(kl, act, dim=-1).tolist()
            sums += (kl * act.to(kl.dtype)).sum(dim=-1).tolist()
    return means, sums


def hf_dir_from_mlflow_model(local: Path, out: Path) -> Path:
    """An HF directory (config + weights + tokenizer) from a downloaded MLflow model.

    A plain HF directory is used as is. The transformers flavour stores the weights in `model/` and the
    tokenizer in `components/tokenizer/`; they are linked side by side into `out`.
    """
    if (local / "config.json").is_file():
        return local
    model_dir = local / "model"
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"policy {local}: downloaded MLflow model has neither config.json nor model/config.json "
                         "(expected the transformers flavour or a logged HF directory)")
    tok_dir = local / "components" / "tokenizer"
    if not tok_dir.is_dir() or (model_dir / "tokenizer_config.json").is_file():
        return model_dir
    out.mkdir(parents=True, exist_ok=True)
    for src in [*model_dir.iterdir(), *tok_dir.iterdir()]:
        if src.is_file() and not (out / src.name).exists():
            (out / src.name).symlink_to(src.resolve())
    return out


def download_registered_model(params: Params, ws: Workspace, uri: str, dst: Path) -> Path:
    """`models:/name@alias` (or `/version`, `models:/m-<id>`) -> local HF directory, via the MLflow registry."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from gapo.tracking.backend import tracking_uri

    store = tracking_uri(params, ws.root)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "mlflow")))
    except MlflowException as exc:
        raise ModelError(f"policy {uri!r}: cannot download from the registry at {store} "
                         f"({str(exc.message).splitlines()[0][:200]})") from None
    return hf_dir_from_mlflow_model(local, dst / "hf")


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _note(msg: str) -> None:
    print(f"gapo evaluate: {msg}", file=sys.stderr, flush=True)


def _note_randomised(n: int) -> None:
    if n:
        _note(f"{n} checker argument(s) would be drawn at random by IFEval's checkers (a `letter` that is not a "
              "letter): scored with lm-eval's draw after random.seed(record key), so the file always scores the same")


def generate_responses(model, tokenizer, prompts: Sequence[str], cfg, max_new_tokens: int, seed: int,
                       reference=None, models_cfg=None, desc: str = "policy") -> list[dict]:
    """Greedy (or sampled) responses to `prompts` with the shared sampler, in input order.

    Each row: `response` (text), `response_tokens` (generated ids, the stop id included), `stopped` (ended on
    a stop id rather than at max_new_tokens), `prompt_truncated`, and with a `reference`
    `kl_to_sft` / `kl_to_sft_seq` (mean and summed exact token KL along the response).
    """
    import torch

    from gapo.models.prompting import encode_prompt
    from gapo.train.rollout import Sampling, sample_and_decode

    limit = getattr(model.config, "max_position_embeddings", None)
    prompt_max = None if limit is None else limit - max_new_tokens
    if prompt_max is not None and prompt_max < 8:
        raise ModelError(f"policy: max_position_embeddings {limit} leaves {prompt_max} prompt tokens after "
                         f"evaluate.max_new_tokens={max_new_tokens}; lower evaluate.max_new_tokens")
    full = [encode_prompt(p, tokenizer) for p in prompts]
    ids = [f if prompt_max is None or len(f) <= prompt_max else encode_prompt(p, tokenizer, prompt_max)
           for f, p in zip(full, prompts)]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    decoder = model
    from gapo.models.loading import autocast_context

    from gapo.config import ModelsConfig

    if not isinstance(autocast_context(next(model.parameters()).device.type, cfg.autocast,
                                       models_cfg or ModelsConfig()),
                      contextlib.nullcontext):
        from gapo.train.sampler import bf16_decoder

        decoder = bf16_decoder(model)
    sampling = Sampling(max_new_tokens, cfg.greedy, cfg.temperature, cfg.top_p, cfg.top_k)
    rows: list[Optional[dict]] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
    from tqdm import tqdm

    from gapo.runtime import bars_off

    for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"evaluate {desc}", unit="batch",
                      disable=bars_off(True), dynamic_ncols=True, mininterval=1.0):
        batch = order[start:start + cfg.batch_size]
        gen = sample_and_decode(decoder, [ids[i] for i in batch], tokenizer, sampling, generator=generator)
        kl = None
        if reference is not None:  # bf16 matmuls where native (2 float32 models x 300 rows was most of the stage)
            with autocast_context(next(model.parameters()).device.type, cfg.autocast, models_cfg or ModelsConfig()):
                kl = kl_per_row(model, reference, gen.samples, max(1, min(8, cfg.batch_size)))
        for j, i in enumerate(batch):
            row = {"response": gen.texts[j], "response_tokens": gen.lengths[j], "stopped": gen.stopped[j],
                   "prompt_truncated": len(ids[i]) < len(full[i])}
            if kl is not None:
                row["kl_to_sft"], row["kl_to_sft_seq"] = kl[0][j], kl[1][j]
            rows[i] = row
    return rows  # type: ignore[return-value]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def generate_and_score(params: Params, ws: Workspace, input_path: str | None, output: str | None,
                       samples: str | None) -> dict[str, Any]:
    """Generation mode: see the module docstring. Returns the metrics written to metrics/evaluate.json."""
    from gapo import runtime
    from gapo.eval.plots import make_report_plots
    from gapo.eval.scoring import aggregate, load_inputs, randomised_count, score
    from gapo.io import write_json, write_jsonl
    from gapo.models.loading import load_policy, load_reward_model

    cfg = params.evaluate
    device = runtime.setup(params)
    path = resolve_input(params, ws, input_path)
    inputs = load_inputs(path, params.data.user.max_line_bytes)
    if cfg.max_prompts:
        inputs = inputs[:cfg.max_prompts]
    spec = cfg.model or str(ws.final / "policy")
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gapo-eval-") as tmp:
        local = download_registered_model(params, ws, spec, Path(tmp)) if spec.startswith("models:/") else spec
        model, tok = load_policy(local, params.models, role="policy")
    model.to(device).eval()

    reference = None
    if ws.sft.is_dir():
        reference, ref_tok = load_policy(ws.sft, params.models, role="reference (SFT)")
        if ref_tok.get_vocab() != tok.get_vocab():
            raise ModelError(f"reference (SFT) {ws.sft}: its tokenizer differs from the policy's ({spec}); "
                             "KL to SFT needs the same vocabulary")
        reference.to(device).eval()
    else:
        skipped["kl_to_sft"] = f"no SFT checkpoint at {ws.sft}"
        if cfg.compare_sft:
            skipped["vs_sft"] = f"no SFT checkpoint at {ws.sft}"

    prompts = [inp.prompt for inp in inputs]
    rows = generate_responses(model, tok, prompts, cfg, cfg.max_new_tokens, params.seed, reference, params.models)
    del model
    sft_rows = None
    if cfg.compare_sft and reference is not None:  # same prompts, decoding and seed: one pair per prompt
        sft_rows = generate_responses(reference, ref_tok, prompts, cfg, cfg.max_new_tokens, params.seed,
                                      models_cfg=params.models, desc="SFT")
    del reference
    verdicts = score(inputs, [r["response"] for r in rows])
    report: dict[str, Any] = {"mode": "generate", "input": _shown(path, ws),
                              "model": spec if spec.startswith("models:/") else _shown(spec, ws), **aggregate(verdicts)}
    report["randomised_kwargs"] = randomised_count(inputs)
    _note_randomised(report["randomised_kwargs"])
    report["mean_response_tokens"] = _mean([r["response_tokens"] for r in rows])
    report["stopped_fraction"] = _mean([float(r["stopped"]) for r in rows])
    report["num_prompts_truncated"] = sum(r["prompt_truncated"] for r in rows)
    if "kl_to_sft" not in skipped:
        report["kl_to_sft"] = _mean([r["kl_to_sft"] for r in rows])
        report["kl_to_sft_seq"] = _mean([r["kl_to_sft_seq"] for r in rows])
    if sft_rows is not None:
        from gapo.eval.paired import compare

        sft_verdicts = score(inputs, [r["response"] for r in sft_rows])
        report["vs_sft"] = {"reference": _shown(ws.sft, ws),
                            **compare(verdicts, sft_verdicts, [r["response_tokens"] for r in rows],
                                      [r["response_tokens"] for r in sft_rows], cfg.paired_resamples, params.seed)}
        for row, sv, sr in zip(rows, sft_verdicts, sft_rows):
            row.update({"sft_response": sr["response"], "sft_response_tokens": sr["response_tokens"],
                        "sft_follow_all_instructions_strict": bool(sv["prompt_level_strict_acc"]),
                        "sft_follow_all_instructions_loose": bool(sv["prompt_level_loose_acc"]),
                        "sft_follow_instruction_list_strict": [bool(x) for x in sv["inst_level_strict_acc"]],
                        "sft_follow_instruction_list_loose": [bool(x) for x in sv["inst_level_loose_acc"]]})

    rm_dir, rm_data = ws.final / "reward", ws.jsonl("rm", cfg.split)
    if rm_dir.is_dir():
        from gapo.train.reward import evaluate_reward_model, load_rm_rows, rm_score

        rm, rm_tok = load_reward_model(rm_dir, params.models)
        rm.to(device).eval()
        rewards = rm_score(rm, rm_tok, [inp.prompt for inp in inputs], [r["response"] for r in rows], params,
                           batch_size=cfg.batch_size).tolist()
        for row, value in zip(rows, rewards):
            row["rm_reward"] = value
        report["mean_rm_reward"] = _mean(rewards)
        if rm_data.exists():
            rm_metrics = evaluate_reward_model(rm, rm_tok, load_rm_rows(rm_data, cfg.rm_rows, seed=params.seed),
                                               params, batch_size=cfg.batch_size)
            report.update({f"rm_{k}": v for k, v in rm_metrics.items()})
        else:
            skipped["rm_accuracy"] = f"no preferential-prompt test pairs at {rm_data}"
        del rm
    else:
        skipped["rm_accuracy"] = f"no reward model at {rm_dir}"
    for what, why in skipped.items():
        _note(f"{what} skipped: {why}")
    report = {k: _nan_to_none(v) for k, v in report.items()}
    if skipped:
        report["skipped"] = skipped

    out = Path(output) if output else ws.metrics_file("evaluate")
    sample_path = Path(samples) if samples else ws.reports / "eval_samples.jsonl"
    write_json(out, report)
    write_jsonl(sample_path, sample_records(verdicts, {i: r for i, r in enumerate(rows)}))
    try:
        figures = [str(p) for p in make_report_plots(ws, report)]
    except DataError as exc:  # a malformed curve file must not throw away a finished evaluation
        _note(f"plots skipped: {exc}")
        figures = []
    summary = {"metrics": str(out), "samples": str(sample_path), "figures": figures,
               **{k: report[k] for k in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                                         "inst_level_loose_acc", "num_prompts")},
               **{k: report.get(k) for k in ("kl_to_sft", "rm_accuracy", "rm_auc", "mean_response_tokens")}}
    if "vs_sft" in report:
        cell = report["vs_sft"]["prompt_level_strict_acc"]
        summary["vs_sft_prompt_level_strict_acc"] = {k: cell[k] for k in ("final", "sft", "delta", "ci95_low",
                                                                          "ci95_high", "p_mcnemar", "p_bootstrap")}
    return summary
