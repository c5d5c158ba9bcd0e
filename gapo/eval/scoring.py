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
    match_responses(inputs, responses, ...) -> (list[str], ignored lines)   joined by prompt text; extras ignored
    join_responses(inputs, responses, ...) -> list[str]      one response per input, joined by prompt text
    score(inputs, responses) -> list[dict]         per-prompt verdicts (+ key, prompt, response, ids)
    aggregate(verdicts) -> dict                    the four numbers, counts, by_instruction, by_category
    score_files(input_path, responses_path) -> (report, verdicts)
Input records are validated with the data engine's `ifeval` schema (gapo.data.schema) and read with its bounded
jsonl reader (gapo.data.loaders.iter_jsonl); every problem raises `gapo.errors.DataError` with one line naming
file, line and field.

Google's published input file (instruction_following_eval/data/input_data.jsonl) asks for the frequency of '#' and
'!' with `keywords:letter_frequency`; the checker replaces any `letter` that is not one letter a-z by
`random.choice(string.ascii_letters)`. `load_inputs` makes that draw itself, with lm-eval's own `build_description`
under `random.seed(key)` (the record's key), writes the drawn letter into the record and lists it in
`IFEvalInput.randomised`: the same file always scores the same, and equals lm-eval's strict and loose checks each
run after `random.seed(key)` (one draw for both, where lm-eval's `process_results` would draw twice).
"""
from __future__ import annotations

import json
import math
import os
import random
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
    # (field, value in the file, value scored) of each argument the checker would have drawn at random
    randomised: tuple[tuple[str, Any, Any], ...] = ()

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


LETTER_FREQUENCY = "keywords:letter_frequency"


def _letter_is_drawn(letter: Any) -> bool:
    """lm-eval's LetterFrequencyChecker draws a random letter for any non-empty `letter` but one ASCII letter (an
    empty or missing one too, but the schema rejects those as missing, like every other missing argument)."""
    if not isinstance(letter, str) or not letter:
        return False
    low = letter.lower()
    return not (len(letter) == 1 and len(low) == 1 and 97 <= ord(low) <= 122)


def draw_random_letters(key: int, instruction_id_list: Sequence[str], kwargs: Sequence[Any]
                        ) -> tuple[list[Any], tuple[tuple[str, Any, Any], ...]]:
    """(kwargs with each `letter` the checker would draw replaced by the letter drawn, what was replaced).

    The draw is lm-eval's own `build_description` after `random.seed(key)`, instruction by instruction in the
    record's order, as lm-eval's `process_results` builds them; the global random state is restored afterwards.
    A record with nothing to draw comes back unchanged.
    """
    targets = [i for i, (iid, kw) in enumerate(zip(instruction_id_list, kwargs))
               if iid == LETTER_FREQUENCY and isinstance(kw, dict) and _letter_is_drawn(kw.get("letter"))]
    if not targets:
        return list(kwargs), ()
    _, registry = ifeval_modules()
    out = [dict(kw) if isinstance(kw, dict) else kw for kw in kwargs]
    drawn = []
    state = random.getstate()
    try:
        random.seed(key)
        for i in targets:
            checker = registry.INSTRUCTION_DICT[LETTER_FREQUENCY](LETTER_FREQUENCY)
            try:
                checker.build_description(**{k: v for k, v in out[i].items() if v})
            except (TypeError, ValueError):
                continue  # another bad argument: the schema names it
            given, out[i]["letter"] = out[i]["letter"], checker.get_instruction_args()["letter"]
            drawn.append((f"kwargs[{i}].letter", given, out[i]["letter"]))
    finally:
        random.setstate(state)
    return out, tuple(drawn)


def load_inputs(path: str | os.PathLike, max_line_bytes: int = _MAX_LINE_BYTES) -> list[IFEvalInput]:
    """Read an IFEval-format jsonl and validate each record with the data engine's `ifeval` schema
    (gapo.data.schema: known instruction ids, each instruction's arguments; `category` optional).

    Google's file is accepted as published: a `letter` the checker would replace by a random letter gets the
    letter lm-eval draws after `random.seed(key)` (`draw_random_letters`), listed in `IFEvalInput.randomised`."""
    from gapo.data import schema

    path = Path(path)
    out: list[IFEvalInput] = []
    first_line: dict[int, int] = {}
    for lineno, obj in _lines(path, "IFEval input", max_line_bytes):
        where = f"IFEval input {path} line {lineno}"
        rec = dict(obj) if isinstance(obj, dict) else obj
        drawn: tuple[tuple[str, Any, Any], ...] = ()
        if isinstance(rec, dict):
            for name, default in schema.USER_DEFAULTS["ifeval"].items():
                if rec.get(name) is None:
                    rec[name] = default(len(out))
            key, ids, kws = rec.get("key"), rec.get("instruction_id_list"), rec.get("kwargs")
            if (isinstance(key, int) and not isinstance(key, bool) and isinstance(ids, list) and isinstance(kws, list)
                    and len(ids) == len(kws)):
                rec["kwargs"], drawn = draw_random_letters(key, ids, kws)
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
                               [dict(k or {}) for k in rec["kwargs"]], str(path), lineno, extra, drawn))
    return out


def randomised_count(inputs: Sequence[IFEvalInput]) -> int:
    """How many arguments of `inputs` the checkers would have drawn at random (scored with the seeded draw)."""
    return sum(len(inp.randomised) for inp in inputs)


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


def match_responses(inputs: Sequence[IFEvalInput], responses: Iterable[tuple[int, str, str]],
                    responses_source: str = "responses") -> tuple[list[str], list[int]]:
    """(one response per input, the lines of responses ignored), matched by exact prompt text.

    As IFEval's evaluation_main: the input's prompts are scored and a response to a prompt the input does not
    hold is ignored (its line is returned, so the caller can count it). Every input needs a response: a partial
    responses file is an error, not a silently smaller denominator; so are two different responses to one prompt.
    """
    by_prompt: dict[str, tuple[int, str]] = {}
    wanted = {inp.prompt for inp in inputs}
    ignored: list[int] = []
    for lineno, prompt, response in responses:
        where = f"{responses_source} line {lineno}"
        if prompt not in wanted:
            ignored.append(lineno)
            continue
        if prompt in by_prompt and by_prompt[prompt][1] != response:
            raise DataError(f"{where}: field 'prompt' repeats line {by_prompt[prompt][0]} with a different response")
        by_prompt[prompt] = (lineno, response)
    out = []
    for inp in inputs:
        if inp.prompt not in by_prompt:
            raise DataError(f"{inp.source} line {inp.line}: no response for this prompt (key {inp.key}) "
                            f"in {responses_source}")
        out.append(by_prompt[inp.prompt][1])
    return out, ignored


def join_responses(inputs: Sequence[IFEvalInput], responses: Iterable[tuple[int, str, str]],
                   responses_source: str = "responses") -> list[str]:
    """One response per input, matched by exact prompt text (`match_responses` without the ignored lines)."""
    return match_responses(inputs, responses, responses_source)[0]


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
    """Scoring-only mode: validate both files, join by prompt, score; returns (report, per-prompt verdicts).

    The report adds `ignored_responses` (responses to prompts the input does not hold, left out as IFEval's
    evaluation_main does) and `randomised_kwargs` (arguments the checkers would have drawn at random)."""
    inputs = load_inputs(input_path, max_line_bytes)
    responses, ignored = match_responses(inputs, load_responses(responses_path, max_line_bytes),
                                         f"responses {responses_path}")
    verdicts = score(inputs, responses)
    report = {**aggregate(verdicts), "ignored_responses": len(ignored), "randomised_kwargs": randomised_count(inputs)}
    return report, verdicts
