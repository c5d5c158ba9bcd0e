"""Record schemas of data/<kind>/<split>.jsonl (docs/architecture.md) and their validation.

One place says which fields each kind has and what they hold; the user-data loader validates user files with
it, the tests validate our own outputs with it, and `hf_features` turns it into the datasets schema (kwargs as
one struct holding every IFEval argument, None where unused: the layout of google/IFEval on the hub).

Validation raises `RecordError(field, expectation)`; the loader adds the file and line to make the one-line
`DataError` the CLI prints.
"""
from __future__ import annotations

import random
import re
from typing import Any, Callable

from gapo.data import constraints as C
from gapo.data.ifeval_checkers import MAX_CHECK_CHARS, MAX_PATTERN_CHARS, PATTERN_ARGS, REGEX_SYNTAX

KINDS = ("sft", "pp", "rm", "pr", "ifeval")

# field -> (type tag, required). Type tags: str, int, label, ids, kwargs, perturbation, iid.
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "sft": {"key": ("int", True), "category": ("str", True), "prompt": ("str", True), "completion": ("str", True),
            "instruction_id_list": ("ids", True), "kwargs": ("kwargs", True)},
    "pp": {"key": ("int", True), "category": ("str", True), "response": ("str", True),
           "chosen_prompt": ("str", True), "rejected_prompt": ("str", True), "perturbation": ("perturbation", True),
           "perturbed_instruction_id": ("iid", True),
           "chosen_instruction_id_list": ("ids", True), "chosen_kwargs": ("kwargs", True),
           "rejected_instruction_id_list": ("ids", True), "rejected_kwargs": ("kwargs", True)},
    "rm": {"key": ("int", True), "prompt": ("str", True), "response": ("str", True), "label": ("label", True),
           "instruction_id_list": ("ids", True), "kwargs": ("kwargs", True)},
    "pr": {"key": ("int", True), "category": ("str", True), "prompt": ("str", True), "chosen": ("str", True),
           "rejected": ("str", True), "broken_instruction_id": ("iid", True),
           "instruction_id_list": ("ids", True), "kwargs": ("kwargs", True)},
    "ifeval": {"key": ("int", True), "prompt": ("str", True), "instruction_id_list": ("ids", True),
               "kwargs": ("kwargs", True), "category": ("str", True)},
}
# Fields a user file may leave out, and the value the loader fills in.
USER_DEFAULTS: dict[str, dict[str, Callable[[int], Any]]] = {
    "sft": {"key": lambda i: i, "category": lambda i: "user"},
    "pp": {"key": lambda i: i, "category": lambda i: "user", "perturbation": lambda i: "user",
           "perturbed_instruction_id": lambda i: "user"},
    "rm": {"key": lambda i: i},
    "pr": {"key": lambda i: i, "category": lambda i: "user", "broken_instruction_id": lambda i: "user"},
    "ifeval": {"category": lambda i: "user"},
}
# (ids field, kwargs field) pairs per kind.
CONSTRAINT_FIELDS = {
    "sft": [("instruction_id_list", "kwargs")], "rm": [("instruction_id_list", "kwargs")],
    "pr": [("instruction_id_list", "kwargs")], "ifeval": [("instruction_id_list", "kwargs")],
    "pp": [("chosen_instruction_id_list", "chosen_kwargs"), ("rejected_instruction_id_list", "rejected_kwargs")],
}


class RecordError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


def _tname(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "list", dict: "object"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Integers are stored as int64 (the HF dataset schema, torch): a larger one would overflow when written.
MAX_INT = 2**63 - 1
# Text fields that the IFEval checkers verify (gapo.data.ifeval_checkers.MAX_CHECK_CHARS bounds their cost).
CHECKED_TEXT = ("completion", "response", "chosen", "rejected")
# Instructions per record (Google's IFEval has at most 6; our catalogue 4).
MAX_INSTRUCTIONS = 32


def _int_range(where: str, v: int) -> None:
    if not -MAX_INT - 1 <= v <= MAX_INT:
        raise RecordError(where, f"integer out of range (a 64-bit integer, |value| < 2**63), got {_short_repr(v)}")


def _short_repr(v: Any, n: int = 60) -> str:
    text = repr(v) if not (_is_int(v) and v.bit_length() > 200) else \
        f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_kwarg(name: str, value: Any, where: str) -> None:
    expected = C.KWARG_TYPES[name]
    if expected is int:
        if not _is_int(value):
            raise RecordError(where, f"expected an integer, got {_tname(value)} {_short_repr(value)}")
        _int_range(where, value)
        if value < 1:
            # lm-eval drops falsy arguments and then picks a random value: 0 would make the check random.
            raise RecordError(where, f"expected a positive integer, got {value}")
    elif expected is str:
        if not isinstance(value, str) or not value.strip():
            raise RecordError(where, f"expected a non-empty string, got {_tname(value)} {_short_repr(value)}")
    elif expected is list:
        if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
            raise RecordError(where, f"expected a non-empty list of non-empty strings, got {_short_repr(value)}")
    if name in ("relation", "let_relation", "capital_relation") and value not in C.RELATIONS:
        raise RecordError(where, f"expected one of {list(C.RELATIONS)}, got {_short_repr(value)}")
    if name == "letter" and not (len(value) == 1 and "a" <= value.lower() <= "z"):
        raise RecordError(where, f"expected one letter a-z, got {_short_repr(value)}")
    if name in PATTERN_ARGS:
        # lm-eval compiles these into regular expressions (gapo.data.ifeval_checkers: escaped when not literal)
        for item in (value if isinstance(value, list) else [value]):
            if len(item) > MAX_PATTERN_CHARS:
                raise RecordError(where, f"{len(item)} characters; at most {MAX_PATTERN_CHARS} (lm-eval makes it "
                                         "part of a regular expression)")
            bad = sorted(REGEX_SYNTAX.intersection(item))
            if bad:
                # lm-eval would compile it: `soft(ness` crashes the checker, `(a+)+$` backtracks for minutes
                raise RecordError(where, f"{_short_repr(item)} is not a valid pattern for the IFEval checker: lm-eval "
                                         f"uses it as a regular expression; give plain text (no {' '.join(bad)})")
    if name == "language":
        codes = _language_codes()
        if value not in codes:
            raise RecordError(where, f"unknown language code {_short_repr(value)} (IFEval knows: "
                                     f"{', '.join(sorted(codes))})")


def _language_codes() -> dict:
    from gapo.data.ifeval_checkers import util

    return util().LANGUAGE_CODES


def validate_constraints(ids: Any, kwargs: Any, ids_field: str, kwargs_field: str, allow_empty: bool) -> None:
    """IFEval form: a list of known instruction ids and one dict of that instruction's arguments per id."""
    reg = C.registry()
    if not isinstance(ids, list):
        raise RecordError(ids_field, f"expected a list of IFEval instruction ids, got {_tname(ids)}")
    if not ids and not allow_empty:
        raise RecordError(ids_field, "expected at least one instruction id, got an empty list")
    if len(ids) > MAX_INSTRUCTIONS:  # bounds the checking cost of one record (docs/reliability.md)
        raise RecordError(ids_field, f"{len(ids)} instructions; at most {MAX_INSTRUCTIONS} per record")
    for i, iid in enumerate(ids):
        if not isinstance(iid, str):
            raise RecordError(f"{ids_field}[{i}]", f"expected a string, got {_tname(iid)}")
        if iid not in reg.INSTRUCTION_DICT:
            raise RecordError(f"{ids_field}[{i}]", f"unknown IFEval instruction id {iid!r} "
                                                   f"(known: {', '.join(sorted(reg.INSTRUCTION_DICT))})")
    if not isinstance(kwargs, list):
        raise RecordError(kwargs_field, f"expected a list of argument dicts, got {_tname(kwargs)}")
    if len(kwargs) != len(ids):
        raise RecordError(kwargs_field, f"expected one dict per instruction id ({len(ids)}), got {len(kwargs)}")
    for i, (iid, kw) in enumerate(zip(ids, kwargs)):
        where = f"{kwargs_field}[{i}]"
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise RecordError(where, f"expected an object of arguments for {iid}, got {_tname(kw)}")
        kw = {k: v for k, v in kw.items() if v is not None}
        allowed = list(C.ALL_ARG_KEYS[iid])
        for name in kw:
            if name not in allowed:
                raise RecordError(f"{where}.{name}", f"not an argument of {iid} (expected: "
                                                     f"{', '.join(allowed) if allowed else 'no arguments'})")
            _check_kwarg(name, kw[name], f"{where}.{name}")
        missing = [a for a in allowed if a not in kw]
        if missing:
            raise RecordError(where, f"missing argument(s) {', '.join(missing)} for {iid} "
                                     "(IFEval would pick a random value)")
        if "nth_paragraph" in kw and "num_paragraphs" in kw and kw["nth_paragraph"] > kw["num_paragraphs"]:
            raise RecordError(f"{where}.nth_paragraph", f"{kw['nth_paragraph']} > num_paragraphs "
                                                        f"{kw['num_paragraphs']} (IFEval would pick a random value)")
        state = random.getstate()
        try:
            C.build_checker(iid, kw).check_following("A probe sentence, with a comma.")
        except re.error as exc:
            raise RecordError(where, f"arguments of {iid} are not a valid pattern for the IFEval checker ({exc})")
        except (TypeError, ValueError, KeyError) as exc:
            raise RecordError(where, f"arguments rejected by the IFEval checker for {iid} ({_short_repr(exc, 200)})")
        drew = random.getstate() != state
        random.setstate(state)
        if drew:  # any argument the checker replaced by a random draw: its verdict would change from run to run
            raise RecordError(where, f"arguments of {iid} that IFEval replaces by a random value "
                                     f"({_short_repr(kw, 120)}); the score would not be reproducible")


def validate_record(kind: str, rec: Any, allow_empty_constraints: bool = False) -> None:
    if not isinstance(rec, dict):
        raise RecordError("(record)", f"expected a JSON object, got {_tname(rec)}")
    for name, (tag, required) in FIELDS[kind].items():
        if name not in rec or rec[name] is None:
            raise RecordError(name, f"missing (a {kind} record needs: {', '.join(FIELDS[kind])})")
        v = rec[name]
        if tag == "str":
            if not isinstance(v, str):
                raise RecordError(name, f"expected a string, got {_tname(v)}")
            if not v.strip():
                raise RecordError(name, "expected a non-empty string, got an empty one")
        elif tag == "int" and not _is_int(v):
            raise RecordError(name, f"expected an integer, got {_tname(v)} {_short_repr(v)}")
        elif tag == "int":
            _int_range(name, v)
        elif tag == "label" and not (_is_int(v) and v in (0, 1)):
            raise RecordError(name, f"expected 0 or 1, got {v!r}")
        elif tag == "perturbation" and v not in ("modify", "insert", "user"):
            raise RecordError(name, f"expected 'modify' or 'insert', got {v!r}")
        elif tag == "iid" and not isinstance(v, str):
            raise RecordError(name, f"expected an instruction id string, got {_tname(v)}")
        if name in CHECKED_TEXT and isinstance(v, str) and len(v) > MAX_CHECK_CHARS:
            raise RecordError(name, f"{len(v)} characters; the IFEval checkers verify at most {MAX_CHECK_CHARS} "
                                    "(docs/reliability.md)")
    # Contradictions: the same input labelled both chosen (1) and rejected (0)
    same = {"pp": ("chosen_prompt", "rejected_prompt"), "pr": ("chosen", "rejected")}.get(kind)
    if same and " ".join(rec[same[0]].split()) == " ".join(rec[same[1]].split()):
        raise RecordError(same[1], f"the same text as {same[0]}: one input labelled both chosen and rejected")
    for ids_field, kwargs_field in CONSTRAINT_FIELDS[kind]:
        validate_constraints(rec[ids_field], rec[kwargs_field], ids_field, kwargs_field,
                             allow_empty_constraints and kind not in ("ifeval", "pp"))


def normalise(kind: str, rec: dict) -> dict:
    """Only the schema's fields, kwargs without None values (the jsonl form)."""
    out = {name: rec[name] for name in FIELDS[kind]}
    for _, kwargs_field in CONSTRAINT_FIELDS[kind]:
        out[kwargs_field] = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in out[kwargs_field]]
    return out


def verify_record(kind: str, rec: dict) -> None:
    """Content check with the IFEval checker: what the record claims about satisfaction must hold."""
    if kind == "sft":
        ok, per = C.check_response(rec["completion"], rec["instruction_id_list"], rec["kwargs"], rec["prompt"])
        if not ok:
            i = per.index(False)
            raise RecordError(f"kwargs[{i}]", f"the completion does not satisfy {rec['instruction_id_list'][i]} "
                                              "(IFEval strict checker)")
    elif kind == "pp":
        ok, per = C.check_response(rec["response"], rec["chosen_instruction_id_list"], rec["chosen_kwargs"],
                                   rec["chosen_prompt"])
        if not ok:
            i = per.index(False)
            raise RecordError(f"chosen_kwargs[{i}]", f"the response does not satisfy chosen constraint "
                                                     f"{rec['chosen_instruction_id_list'][i]} (IFEval strict checker)")
        ok, _ = C.check_response(rec["response"], rec["rejected_instruction_id_list"], rec["rejected_kwargs"],
                                 rec["rejected_prompt"])
        if ok:
            raise RecordError("rejected_instruction_id_list", "the response satisfies every rejected constraint; "
                                                              "a rejected prompt must be violated")
    elif kind == "pr":
        ok, per = C.check_response(rec["chosen"], rec["instruction_id_list"], rec["kwargs"], rec["prompt"])
        if not ok:
            i = per.index(False)
            raise RecordError(f"kwargs[{i}]", f"the chosen response does not satisfy "
                                              f"{rec['instruction_id_list'][i]} (IFEval strict checker)")
        ok, _ = C.check_response(rec["rejected"], rec["instruction_id_list"], rec["kwargs"], rec["prompt"])
        if ok:
            raise RecordError("rejected", "the rejected response satisfies every constraint")
    elif kind == "rm":
        ok, _ = C.check_response(rec["response"], rec["instruction_id_list"], rec["kwargs"], rec["prompt"])
        if ok != bool(rec["label"]):
            raise RecordError("label", f"label {rec['label']} but the IFEval checker says the response "
                                       f"{'satisfies' if ok else 'violates'} the constraints")


def hf_features(kind: str):
    import datasets

    def value(tag: str):
        return datasets.Value("int64") if tag in ("int", "label") else datasets.Value("string")

    kwarg_struct = {name: (datasets.Value("int64") if t is int else datasets.List(datasets.Value("string"))
                           if t is list else datasets.Value("string"))
                    for name, t in sorted(C.KWARG_TYPES.items())}
    feats = {}
    for name, (tag, _) in FIELDS[kind].items():
        if tag == "ids":
            feats[name] = datasets.List(datasets.Value("string"))
        elif tag == "kwargs":
            feats[name] = datasets.List(kwarg_struct)
        else:
            feats[name] = value(tag)
    return datasets.Features(feats)
