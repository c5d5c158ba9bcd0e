"""IFEval's input file exactly as Google published it.

tests/eval/data/ifeval_google_input.jsonl holds six records copied verbatim from google-research's
instruction_following_eval/data/input_data.jsonl, among them key 1122 (`letter` "#") and key 1129 (`letter` "!"),
which lm-eval's LetterFrequencyChecker replaces by `random.choice(string.ascii_letters)`.
tests/eval/data/ifeval_google_hf_layout.jsonl holds the same records in the layout of google/IFEval on the hub:
every kwargs dict names every argument, null where unused.
"""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

from gapo.cli import main
from gapo.eval import scoring

DATA = Path(__file__).parent / "data"
GOOGLE = DATA / "ifeval_google_input.jsonl"
HF_LAYOUT = DATA / "ifeval_google_hf_layout.jsonl"
DRAWN = {1122: "#", 1129: "!"}


@pytest.fixture(autouse=True)
def _keep_global_random_state():
    """These tests seed Python's global generator as lm-eval users do; other tests get it back as it was."""
    state = random.getstate()
    yield
    random.setstate(state)


def _raw() -> list[dict]:
    return [json.loads(line) for line in GOOGLE.read_text(encoding="utf-8").splitlines()]


def _lm_eval_letter(seed: int, kwargs: dict) -> str:
    """The letter lm-eval 0.4.13's own checker class uses for these arguments after random.seed(seed)."""
    scoring.ifeval_modules()  # NLTK data in place before lm-eval's modules import
    from lm_eval.tasks.ifeval.instructions import LetterFrequencyChecker

    random.seed(seed)
    checker = LetterFrequencyChecker("keywords:letter_frequency")
    checker.build_description(**{k: v for k, v in kwargs.items() if v})
    return checker.get_instruction_args()["letter"]


def test_lm_eval_draws_a_random_letter_for_a_non_letter():
    """The behaviour the loader reproduces: lm-eval accepts '#' and draws a letter, which depends on the seed."""
    kw = {"let_relation": "at least", "letter": "#", "let_frequency": 4}
    drawn = {_lm_eval_letter(seed, kw) for seed in range(40)}
    assert drawn <= set(string.ascii_lowercase) and len(drawn) > 5
    assert _lm_eval_letter(7, kw) == _lm_eval_letter(7, kw)
    assert _lm_eval_letter(7, {**kw, "letter": "Q"}) == "q"  # a letter is kept (lower-cased), nothing drawn


@pytest.mark.parametrize("path", [GOOGLE, HF_LAYOUT], ids=["github", "hf_layout"])
def test_google_file_loads_with_the_seeded_draw(path):
    raw = {r["key"]: r for r in _raw()}
    state = random.getstate()
    inputs = scoring.load_inputs(path)
    assert random.getstate() == state, "loading must not move the global random state"
    assert [i.key for i in inputs] == list(raw)
    assert scoring.randomised_count(inputs) == 2
    for inp in inputs:
        if inp.key in DRAWN:
            (field, given, used), = inp.randomised
            j = inp.instruction_id_list.index("keywords:letter_frequency")
            assert field == f"kwargs[{j}].letter" and given == DRAWN[inp.key]
            assert used == inp.kwargs[j]["letter"] == _lm_eval_letter(inp.key, raw[inp.key]["kwargs"][j])
            assert used in string.ascii_lowercase
        else:
            assert inp.randomised == ()
        # apart from the drawn letter (and the hub layout's nulls) the arguments are the file's
        got = [{k: v for k, v in kw.items() if v is not None} for kw in inp.doc()["kwargs"]]
        want = [dict(kw) for kw in raw[inp.key]["kwargs"]]
        for field, _, used in inp.randomised:
            want[int(field[len("kwargs["):field.index("]")])]["letter"] = used
        assert got == want
    assert scoring.load_inputs(path)[2].kwargs == inputs[2].kwargs  # the same file always draws the same


def _responses(letter: str, prompt: str) -> list[str]:
    others = "".join(c for c in "the quick brown fox jumps over the lazy dog" if c != letter)
    return [f"{letter} {letter} {letter}{letter} nice {letter}!! #sun #fun #ice #cream",  # lowercase, 4+ of the letter
            others + " ok",                                                         # none of the letter
            f"{prompt}\n" + letter * 7 + "!!!!!!",                                  # the prompt repeated, then more
            f"Intro Line\n{letter * 6} then more",                                   # loose differs from strict
            ""]                                                                      # empty: fails everything


@pytest.mark.parametrize("key", sorted(DRAWN))
def test_non_letter_record_scores_as_lm_eval_with_the_same_seed(key):
    """Our verdicts on the loaded record equal lm-eval's own functions on the raw record after random.seed(key)."""
    from lm_eval.tasks.ifeval import utils

    raw = next(r for r in _raw() if r["key"] == key)
    inp = next(i for i in scoring.load_inputs(GOOGLE) if i.key == key)
    j = inp.instruction_id_list.index("keywords:letter_frequency")
    letter = inp.kwargs[j]["letter"]
    responses = _responses(letter, raw["prompt"])
    ours = scoring.score([inp] * len(responses), responses)
    example = utils.InputExample(key=raw["key"], instruction_id_list=raw["instruction_id_list"], prompt=raw["prompt"],
                                 kwargs=raw["kwargs"])
    letter_verdicts = set()
    for response, verdict in zip(responses, ours):
        random.seed(key)
        strict = utils.test_instruction_following_strict(example, response)
        random.seed(key)
        loose = utils.test_instruction_following_loose(example, response)
        assert verdict["inst_level_strict_acc"] == strict.follow_instruction_list, response
        assert verdict["inst_level_loose_acc"] == loose.follow_instruction_list, response
        assert verdict["prompt_level_strict_acc"] == strict.follow_all_instructions
        letter_verdicts.add(strict.follow_instruction_list[j])
    assert letter_verdicts == {True, False}, "the responses must both pass and fail the drawn letter"


def test_cli_scores_the_google_file_with_extra_responses(tmp_path, capsys):
    """`gapo evaluate --input <Google's file> --responses R`: loads, scores the input's prompts, ignores and counts
    responses to other prompts, reports the randomised arguments; the same files give the same report."""
    raw = _raw()
    resp = tmp_path / "responses.jsonl"
    rows = [{"prompt": r["prompt"], "response": f"answer {i} without commas"} for i, r in enumerate(raw)]
    rows.insert(2, {"prompt": "A prompt of another benchmark.", "response": "x"})
    rows.append({"prompt": "Yet another prompt.", "response": "y"})
    resp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "params.yaml").write_text("", encoding="utf-8")
    reports = []
    for n in (1, 2):
        out = tmp_path / f"scores{n}.json"
        assert main(["--params", str(tmp_path / "params.yaml"), "--workdir", str(tmp_path), "evaluate",
                     "--input", str(GOOGLE), "--responses", str(resp), "--output", str(out)]) == 0
        reports.append(json.loads(out.read_text(encoding="utf-8")))
    err = capsys.readouterr().err
    assert "2 response(s)" in err and "ignored" in err and "2 checker argument(s)" in err
    rep = reports[0]
    assert rep == reports[1]
    assert rep["num_prompts"] == 6 and rep["ignored_responses"] == 2 and rep["randomised_kwargs"] == 2
    assert rep["by_instruction"]["punctuation:no_comma"]["inst_level_strict_acc"] == 1.0
