"""lm-eval's IFEval checkers as this project runs them (gapo.data.ifeval_checkers): user strings reach their regular
expressions only in a safe form, a checked text has a bounded length, and for every normal argument the verdict
is lm-eval's own, bit for bit (issue 13, item 2)."""
from __future__ import annotations

import time

import pytest

from gapo.data import constraints as C
from gapo.data import ifeval_checkers as IC

# (instruction id, kwargs) with normal arguments, as in Google's IFEval and our catalogue
NORMAL = [
    ("keywords:existence", {"keywords": ["durable", "well-being"]}),
    ("keywords:forbidden_words", {"forbidden_words": ["cheap", "don't"]}),
    ("keywords:frequency", {"keyword": "mug", "frequency": 2, "relation": "at least"}),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}),
    ("detectable_content:number_placeholders", {"num_placeholders": 1}),
    ("detectable_format:title", {}),
    ("punctuation:no_comma", {}),
]
TEXTS = [
    "A durable mug for your well-being. The mug is a mug.\nP.S. wash it.",
    "<<Title>>\nSECTION 1\nCheap? No. Section 1 intro\nSection 2 more [name]\nP.P.S. done\nNote: ok",
    "don't buy this mug, mug mug. p. s. later",
    "Durable, well being, WELL-BEING; Mugs. Note:",
]


def _original(iid: str):
    cls = IC.registry().INSTRUCTION_DICT[iid]
    assert getattr(cls, "__gapo_safe__", False), "the registry holds the safe subclasses"
    return cls.__mro__[1]  # lm-eval's own class


@pytest.mark.parametrize("iid,kwargs", NORMAL, ids=[f"{i}:{list(k.values())[:1]}" for i, k in NORMAL])
def test_normal_arguments_score_exactly_as_lm_eval(iid, kwargs):
    for text in TEXTS:
        ours = C.build_checker(iid, kwargs).check_following(text)
        theirs = _original(iid)(iid)
        theirs.build_description(**{k: v for k, v in kwargs.items() if v})
        assert bool(ours) == bool(theirs.check_following(text)), (iid, kwargs, text)


def test_every_registry_class_is_wrapped():
    table = IC.registry().INSTRUCTION_DICT
    assert table and all(getattr(cls, "__gapo_safe__", False) for cls in table.values())


@pytest.mark.parametrize("iid,kwargs", [
    ("keywords:existence", {"keywords": ["(a+)+$"]}),
    ("keywords:frequency", {"keyword": "(a|aa)+$", "frequency": 1, "relation": "at least"}),
    ("keywords:forbidden_words", {"forbidden_words": ["(a*)*b"]}),
    ("detectable_content:postscript", {"postscript_marker": "(a+)+$"}),
    ("detectable_format:multiple_sections", {"section_spliter": "(a+)+$", "num_sections": 1}),
])
def test_a_catastrophic_pattern_is_matched_literally_and_fast(iid, kwargs):
    """lm-eval would spend minutes on `(a+)+$` against 28 a's and a '!' (exponential backtracking); here the
    string reaches the regex escaped, so it is searched for as text: fast, and found only where it is written."""
    hostile = "a" * 40 + "!"
    t0 = time.process_time()
    verdict = C.check_response(hostile, [iid], [kwargs])
    assert time.process_time() - t0 < 1.0
    assert isinstance(verdict[0], bool)
    if iid == "keywords:existence":
        assert verdict[0] is False
        assert C.check_response(f"it says {kwargs['keywords'][0]} here", [iid], [kwargs])[0] is True


def test_a_text_longer_than_the_bound_is_refused_not_scored():
    with pytest.raises(IC.CheckTooLong, match=f"at most {IC.MAX_CHECK_CHARS}"):
        C.check_response("[" * (IC.MAX_CHECK_CHARS + 1), ["detectable_content:number_placeholders"],
                         [{"num_placeholders": 1}])


def test_the_worst_known_text_at_the_bound_stays_within_the_documented_cost():
    """docs/reliability.md states the bound: lm-eval's quadratic placeholder pattern on MAX_CHECK_CHARS '[' is the
    worst text we know; strict + the 8 loose variants of one instruction cost seconds of CPU, not minutes."""
    from gapo.data.ifeval_checkers import scoring

    sc = scoring()
    inp = sc.InputExample(key=0, instruction_id_list=["detectable_content:number_placeholders"], prompt="p",
                          kwargs=[{"num_placeholders": 1}])
    text = "[" * IC.MAX_CHECK_CHARS
    t0 = time.process_time()
    sc.test_instruction_following_strict(inp, text)
    sc.test_instruction_following_loose(inp, text)
    assert time.process_time() - t0 < 60  # CPU seconds (not wall: a loaded box must not fail it); measured 7.7 s


def test_validation_refuses_what_the_checker_would_compile():
    from gapo.data.schema import RecordError, validate_constraints

    with pytest.raises(RecordError, match="not a valid pattern"):
        validate_constraints(["keywords:existence"], [{"keywords": ["(a+)+$"]}], "ids", "kwargs", False)
    validate_constraints(["keywords:existence"], [{"keywords": ["well-being", "e.g."]}], "ids", "kwargs", False)
