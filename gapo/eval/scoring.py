"""IFEval scoring: lm-eval's own per-prompt verdicts, lm-eval's aggregation, and a per-constraint breakdown.

The verdicts come from `lm_eval.tasks.ifeval.utils.process_results` (strict, and loose = the best of
eight variants of the response with the first/last line and markdown `*` removed); nothing here
re-implements a checker. The four headline numbers use lm-eval's key names and aggregation:
`prompt_level_*_acc` is the mean over prompts of "every instruction followed", `inst_level_*_acc` is
lm-eval's `agg_inst_level_acc` (the mean over all instructions of all prompts). The breakdown gives the
instruction-level accuracy per instruction id (`keywords:existence`) and per category (the part
before ':', `keywords`), as Google's IFEval report does.

API
    load_inputs(path) -> list[IFEvalInput]         IFEval input jsonl (key, prompt, instruction_id_list, kwargs)
    load_responses(path) -> list[(line, prompt, response)]   IFEval `input_response_data` jsonl
    join_responses(inputs, responses, ...) -> list[str]      one response per input, joined by prompt text
    score(inputs, responses) -> list[dict]         per-prompt verdicts (+ key, prompt, response, ids)
    aggregate(verdicts) -> dict                    the four numbers, counts, by_instruction, by_category
    score_files(input_path, responses_path) -> (report, verdicts)
Input records are validated with the data engine's `ifeval` schema (gapo.data.schema) and read with its bounded
jsonl reader (gapo.data.loaders.iter_jsonl); every problem raises `gapo.errors.DataError` with one line naming
file, line and field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Sequence

from gapo.config import UserDataConfig
from gapo.errors import DataError

_MAX_LINE_BYTES = UserDataConfig().max_line_bytes
METRIC_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def ifeval_modules() -> tuple[ModuleType, ModuleType]:
    """(lm_eval.tasks.ifeval.utils, instructions_registry) through gapo.data.ifeval_checkers, the one place
    that imports them (NLTK punkt data written first, langdetect seeded)."""
    from gapo.data import ifeval_checkers

    return ifeval_checkers.scoring(), ifeval_checkers.registry()


@dataclass(frozen=True)
class IFEvalInput:
    """One IFEval prompt. `line` is its 1-based line in `source` (0 when built in memory)."""

    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    source: str = "<memory>"
    line: int = 0
    extra: tuple[tuple[str, Any], ...] = ()

    def doc(self) -> dict:
        """The document lm-eval's `process_results` takes."""
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_id_list),
                "kwargs": [dict(k) for k in self.kwargs]}


# ------------------------------------------------------------------------------------------ reading
def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _lines(path: Path, what: str, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """gapo.data.loaders.iter_jsonl (bounded lines, one-line errors), with a missing file named as `what`."""
    from gapo.data.loaders import iter_jsonl

    if not path.is_file():
        raise DataError(f"{what} {path}: " + ("is a directory, expected a .jsonl file" if path.is_dir()
                                               else "file not found"))
    yield from iter_jsonl(path, max_line_bytes)


def load_inputs(path: str | os.PathLike, max_line_bytes: int = _MAX_LINE_BYTES) -> list[IFEvalInput]:
    """Read an IFEval-format jsonl and validate each record with the data engine's `ifeval` schema
    (gapo.data.schema: known instruction ids, each instruction's arguments; `category` optional)."""
    from gapo.data import schema

    path = Path(path)
    out: list[IFEvalInput] = []
    first_line: dict[int, int] = {}
    for lineno, obj in _lines(path, "IFEval input", max_line_bytes):
        where = f"IFEval input {path} line {lineno}"
        rec = dict(obj) if isinstance(obj, dict) else obj
        if isinstance(rec, dict):
            for name, default in schema.USER_DEFAULTS["ifeval"].items():
                if rec.get(name) is None:
                    rec[name] = default(len(out))
        try:
            schema.validate_record("ifeval", rec)
        except schema.RecordError as exc:
            raise DataError(f"{where}: field '{exc.field}': {exc.message}") from None
        if rec["key"] in first_line:
            raise DataError(f"{where}: field 'key': duplicate key {rec['key']} (first at line {first_line[rec['key']]})")
        first_line[rec["key"]] = lineno
        extra = tuple(sorted((k, v) for k, v in rec.items()
                             if k not in ("key", "prompt", "instruction_id_list", "kwargs")))
        # kwargs as given (None values included): lm-eval's process_results drops them itself
        out.append(IFEvalInput(rec["key"], rec["prompt"], list(rec["instruction_id_list"]),
                               [dict(k or {}) for k in rec["kwargs"]], str(path), lineno, extra))
    return out


def load_responses(path: str | os.PathLike, max_line_bytes: int = _MAX_LINE_BYTES) -> list[tuple[int, str, str]]:
    """Read IFEval's `input_response_data` jsonl: one `{"prompt": ..., "response": ...}` per line."""
    path = Path(path)
    out = []
    for lineno, obj in _lines(path, "responses", max_line_bytes):
        where = f"responses {path} line {lineno}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with fields 'prompt' and 'response', "
                            f"got {type(obj).__name__}")
        for name in ("prompt", "response"):
            if name not in obj:
                raise DataError(f"{where}: field '{name}': missing (a responses record needs: prompt, response)")
            if not isinstance(obj[name], str):
                raise DataError(f"{where}: field '{name}': expected a string, got {type(obj[name]).__name__} "
                                f"{_short(obj[name])}")
        out.append((lineno, obj["prompt"], obj["response"]))
    return out


def join_responses(inputs: Sequence[IFEvalInput], responses: Iterable[tuple[int, str, str]],
                   responses_source: str = "responses") -> list[str]:
    """One response per input, matched by exact prompt text (as IFEval's evaluation_main does).

    Every input needs a response, and every response must belong to an input prompt: a partial or
    mismatched responses file is an error, not a silently smaller denominator.
    """
    by_prompt: dict[str, tuple[int, str]] = {}
    wanted = {inp.prompt for inp in inputs}
    for lineno, prompt, response in responses:
        where = f"{responses_source} line {lineno}"
        if prompt not in wanted:
            raise DataError(f"{where}: field 'prompt' {_short(prompt)} matches no prompt in the input file")
        if prompt in by_prompt and by_prompt[prompt][1] != response:
            raise DataError(f"{where}: field 'prompt' repeats line {by_prompt[prompt][0]} with a different response")
        by_prompt[prompt] = (lineno, response)
    out = []
    for inp in inputs:
        if inp.prompt not in by_prompt:
            raise DataError(f"{inp.source} line {inp.line}: no response for this prompt (key {inp.key}) "
                            f"in {responses_source}")
        out.append(by_prompt[inp.prompt][1])
    return out


# ------------------------------------------------------------------------------------------ scoring
def score(inputs: Sequence[IFEvalInput], responses: Sequence[str]) -> list[dict]:
    """Per-prompt verdicts from lm-eval's `process_results`, with the prompt's identity alongside."""
    if len(inputs) != len(responses):
        raise ValueError(f"{len(inputs)} inputs but {len(responses)} responses")
    utils, _ = ifeval_modules()
    out = []
    for inp, response in zip(inputs, responses):
        verdict = utils.process_results(inp.doc(), [response])
        out.append({"key": inp.key, "prompt": inp.prompt, "response": response,
                    "instruction_id_list": list(inp.instruction_id_list),
                    **{k: verdict[k] for k in METRIC_KEYS}})
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def aggregate(verdicts: Sequence[dict]) -> dict:
    """lm-eval's four numbers (mean for prompt level, `agg_inst_level_acc` for instruction level) + breakdown."""
    if not verdicts:
        raise ValueError("no verdicts to aggregate")
    utils, _ = ifeval_modules()
    report: dict[str, Any] = {
        "prompt_level_strict_acc": _mean([float(v["prompt_level_strict_acc"]) for v in verdicts]),
        "inst_level_strict_acc": utils.agg_inst_level_acc([v["inst_level_strict_acc"] for v in verdicts]),
        "prompt_level_loose_acc": _mean([float(v["prompt_level_loose_acc"]) for v in verdicts]),
        "inst_level_loose_acc": utils.agg_inst_level_acc([v["inst_level_loose_acc"] for v in verdicts]),
        "num_prompts": len(verdicts),
        "num_instructions": sum(len(v["instruction_id_list"]) for v in verdicts),
    }
    per_id: dict[str, dict[str, list[bool]]] = {}
    per_cat: dict[str, dict[str, list[bool]]] = {}
    for v in verdicts:
        for iid, strict, loose in zip(v["instruction_id_list"], v["inst_level_strict_acc"], v["inst_level_loose_acc"]):
            for table, name in ((per_id, iid), (per_cat, iid.split(":", 1)[0])):
                cell = table.setdefault(name, {"strict": [], "loose": []})
                cell["strict"].append(bool(strict))
                cell["loose"].append(bool(loose))

    def _table(table: dict[str, dict[str, list[bool]]]) -> dict:
        return {name: {"count": len(c["strict"]), "inst_level_strict_acc": _mean(c["strict"]),
                       "inst_level_loose_acc": _mean(c["loose"])}
                for name, c in sorted(table.items())}

    report["by_instruction"] = _table(per_id)
    report["by_category"] = _table(per_cat)
    return report


def score_files(input_path: str | os.PathLike, responses_path: str | os.PathLike,
                max_line_bytes: int = _MAX_LINE_BYTES) -> tuple[dict, list[dict]]:
    """Scoring-only mode: validate both files, join by prompt, score; returns (report, per-prompt verdicts)."""
    inputs = load_inputs(input_path, max_line_bytes)
    responses = join_responses(inputs, load_responses(responses_path, max_line_bytes), f"responses {responses_path}")
    verdicts = score(inputs, responses)
    return aggregate(verdicts), verdicts
