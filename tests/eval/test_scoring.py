"""gapo.eval.scoring against lm-eval: the same verdicts, the same four numbers, the hand-derived expectations.

tests/eval/data/ifeval_cases.jsonl holds hand-written responses, each with the strict and loose verdict per
instruction derived by reading the checker (`expect_strict`, `expect_loose`) and a `why`. They cover pass and
fail for every instruction type lm-eval registers, multi-instruction prompts, empty responses, IFEval-style
kwargs with None values, and loose-only passes (first line, last line or markdown `*` removed).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapo.errors import DataError
from gapo.eval import scoring

CASES_PATH = Path(__file__).parent / "data" / "ifeval_cases.jsonl"


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    with open(CASES_PATH, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def inputs(cases):
    return [scoring.IFEvalInput(c["key"], c["prompt"], c["instruction_id_list"], c["kwargs"]) for c in cases]


@pytest.fixture(scope="module")
def verdicts(cases, inputs):
    return scoring.score(inputs, [c["response"] for c in cases])


def test_fixture_covers_what_it_claims(cases):
    _, registry = scoring.ifeval_modules()
    ids = {i for c in cases for i in c["instruction_id_list"]}
    assert ids == set(registry.INSTRUCTION_DICT), "every registered instruction type appears"
    strict_pass = {i for c in cases for i, ok in zip(c["instruction_id_list"], c["expect_strict"]) if ok}
    fail = {i for c in cases for i, ok in zip(c["instruction_id_list"], c["expect_loose"]) if not ok}
    assert len(strict_pass) == len(ids) and len(fail) >= 20
    loose_only = [c for c in cases if not all(c["expect_strict"]) and all(c["expect_loose"])]
    assert len(loose_only) >= 5
    assert len({c["prompt"] for c in cases}) == len(cases)


def test_verdicts_match_hand_derived_expectations(cases, verdicts):
    for case, v in zip(cases, verdicts):
        assert v["inst_level_strict_acc"] == case["expect_strict"], (case["key"], case["why"])
        assert v["inst_level_loose_acc"] == case["expect_loose"], (case["key"], case["why"])
        assert v["prompt_level_strict_acc"] == all(case["expect_strict"])
        assert v["prompt_level_loose_acc"] == all(case["expect_loose"])


def test_four_numbers_equal_lm_eval_aggregation(cases, inputs, verdicts):
    # lm-eval's own path: process_results per doc, then the aggregations ifeval.yaml names
    from lm_eval.api.registry import get_aggregation
    from lm_eval.tasks.ifeval import utils

    per_doc = [utils.process_results({"key": c["key"], "prompt": c["prompt"], "instruction_id_list": c["instruction_id_list"],
                                      "kwargs": c["kwargs"]}, [c["response"]]) for c in cases]
    mean = get_aggregation("mean")
    expected = {
        "prompt_level_strict_acc": mean([d["prompt_level_strict_acc"] for d in per_doc]),
        "inst_level_strict_acc": utils.agg_inst_level_acc([d["inst_level_strict_acc"] for d in per_doc]),
        "prompt_level_loose_acc": mean([d["prompt_level_loose_acc"] for d in per_doc]),
        "inst_level_loose_acc": utils.agg_inst_level_acc([d["inst_level_loose_acc"] for d in per_doc]),
    }
    report = scoring.aggregate(verdicts)
    for key in scoring.METRIC_KEYS:
        assert report[key] == expected[key], key


def test_four_numbers_equal_hand_counts(cases, verdicts):
    report = scoring.aggregate(verdicts)
    n = len(cases)
    flat_s = [x for c in cases for x in c["expect_strict"]]
    flat_l = [x for c in cases for x in c["expect_loose"]]
    assert report["num_prompts"] == n and report["num_instructions"] == len(flat_s)
    assert report["prompt_level_strict_acc"] == pytest.approx(sum(all(c["expect_strict"]) for c in cases) / n)
    assert report["prompt_level_loose_acc"] == pytest.approx(sum(all(c["expect_loose"]) for c in cases) / n)
    assert report["inst_level_strict_acc"] == pytest.approx(sum(flat_s) / len(flat_s))
    assert report["inst_level_loose_acc"] == pytest.approx(sum(flat_l) / len(flat_l))
    # loose is an upper bound, and the fixture has loose-only passes, so strictly above
    assert report["prompt_level_loose_acc"] > report["prompt_level_strict_acc"]


def test_breakdown_per_instruction_and_category(cases, verdicts):
    report = scoring.aggregate(verdicts)
    # end_checker: 1 pass, 3 loose only (bold, last line, last line in a 2-instruction prompt), 1 fail
    end = report["by_instruction"]["startend:end_checker"]
    assert end == {"count": 5, "inst_level_strict_acc": 1 / 5, "inst_level_loose_acc": 4 / 5}
    # json_format: fenced pass, first-line (loose only), plain fail
    js = report["by_instruction"]["detectable_format:json_format"]
    assert js["count"] == 3 and js["inst_level_strict_acc"] == pytest.approx(1 / 3) and js["inst_level_loose_acc"] == pytest.approx(2 / 3)
    for cat, cell in report["by_category"].items():
        hits = [(s, lo) for c in cases for i, s, lo in zip(c["instruction_id_list"], c["expect_strict"], c["expect_loose"])
                if i.split(":")[0] == cat]
        assert cell["count"] == len(hits)
        assert cell["inst_level_strict_acc"] == pytest.approx(sum(s for s, _ in hits) / len(hits))
        assert cell["inst_level_loose_acc"] == pytest.approx(sum(lo for _, lo in hits) / len(hits))
    assert set(report["by_category"]) == {i.split(":")[0] for c in cases for i in c["instruction_id_list"]}
    assert sum(c["count"] for c in report["by_instruction"].values()) == report["num_instructions"]


# ---------------------------------------------------------------------------------------- input files
def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


GOOD = {"key": 1, "prompt": "Write about a lamp.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


def test_score_files_joins_by_prompt_text(tmp_path, cases):
    inp = _write(tmp_path / "in.jsonl", [{k: c[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")} for c in cases])
    # responses in reverse order, with a blank line: the join is by prompt text, not position
    resp = _write(tmp_path / "resp.jsonl", [{"prompt": c["prompt"], "response": c["response"]} for c in reversed(cases)] + [""])
    report, verdicts = scoring.score_files(inp, resp)
    assert [v["key"] for v in verdicts] == [c["key"] for c in cases]
    assert [v["response"] for v in verdicts] == [c["response"] for c in cases]
    assert report["prompt_level_strict_acc"] == pytest.approx(sum(all(c["expect_strict"]) for c in cases) / len(cases))


@pytest.mark.parametrize("record, line, needle", [
    ({**GOOD, "key": "one"}, 2, "field 'key': expected an integer, got string 'one'"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, 2, "field 'prompt': missing"),
    ({**GOOD, "instruction_id_list": ["keywords:nonsense"]}, 2,
     "field 'instruction_id_list[0]': unknown IFEval instruction id 'keywords:nonsense'"),
    ({**GOOD, "kwargs": []}, 2, "field 'kwargs': expected one dict per instruction id (1), got 0"),
    ({**GOOD, "kwargs": ["x"]}, 2, "field 'kwargs[0]': expected an object of arguments"),
    ({**GOOD, "instruction_id_list": ["keywords:existence"], "kwargs": [{"keyword": ["x"]}]}, 2,
     "field 'kwargs[0].keyword': not an argument of keywords:existence"),
    ({**GOOD, "instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "x", "frequency": 2}]}, 2,
     "field 'kwargs[0]': missing argument(s) relation"),
    ({**GOOD, "instruction_id_list": []}, 2, "field 'instruction_id_list': expected at least one instruction id"),
    ({**GOOD, "prompt": "Second."}, 2, "field 'key': duplicate key 1 (first at line 1)"),
    ("{not json", 2, "line 2: invalid JSON"),
    ("[1, 2]", 2, "field '(record)': expected a JSON object, got list"),
])
def test_bad_input_gives_one_line_error(tmp_path, record, line, needle):
    path = _write(tmp_path / "in.jsonl", [{**GOOD, "prompt": "First."}, record])
    with pytest.raises(DataError) as exc:
        scoring.load_inputs(path)
    msg = str(exc.value)
    assert "\n" not in msg and f"{path} line {line}" in msg and needle in msg, msg


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        scoring.load_inputs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        scoring.load_inputs(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(DataError, match="is a directory"):
        scoring.load_responses(tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl line 1: not UTF-8"):
        scoring.load_responses(tmp_path / "latin1.jsonl")


def test_response_join_errors(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [GOOD, {**GOOD, "key": 2, "prompt": "Second prompt."}])
    inputs = scoring.load_inputs(inp)

    def join(lines):
        path = _write(tmp_path / "resp.jsonl", lines)
        return scoring.join_responses(inputs, scoring.load_responses(path), f"responses {path}")

    with pytest.raises(DataError, match=r"in.jsonl line 2: no response for this prompt \(key 2\)"):
        join([{"prompt": GOOD["prompt"], "response": "ok"}])
    # a response to a prompt the input does not hold does not make up for a missing one
    with pytest.raises(DataError, match=r"in.jsonl line 2: no response for this prompt \(key 2\)"):
        join([{"prompt": GOOD["prompt"], "response": "ok"}, {"prompt": "Other.", "response": "x"}])
    with pytest.raises(DataError, match=r"resp.jsonl line 2: field 'prompt' repeats line 1 with a different response"):
        join([{"prompt": GOOD["prompt"], "response": "a"}, {"prompt": GOOD["prompt"], "response": "b"}])
    with pytest.raises(DataError, match=r"resp.jsonl line 1: field 'response': expected a string, got NoneType"):
        join([{"prompt": GOOD["prompt"], "response": None}])
    assert join([{"prompt": "Second prompt.", "response": "b"}, {"prompt": GOOD["prompt"], "response": "a"}]) == ["a", "b"]


def test_extra_responses_are_ignored_and_counted(tmp_path):
    """IFEval's evaluation_main scores the input's prompts and ignores responses to any other prompt."""
    inp = _write(tmp_path / "in.jsonl", [GOOD, {**GOOD, "key": 2, "prompt": "Second prompt."}])
    inputs = scoring.load_inputs(inp)
    resp = _write(tmp_path / "resp.jsonl", [{"prompt": "Other.", "response": "x, y"},
                                            {"prompt": "Second prompt.", "response": "b"},
                                            {"prompt": "Other.", "response": "a different one"},  # not checked
                                            {"prompt": GOOD["prompt"], "response": "a, b"},
                                            {"prompt": "Third.", "response": "z"}])
    responses, ignored = scoring.match_responses(inputs, scoring.load_responses(resp))
    assert responses == ["a, b", "b"] and ignored == [1, 3, 5]
    report, verdicts = scoring.score_files(inp, resp)
    assert report["ignored_responses"] == 3 and report["num_prompts"] == 2 and report["randomised_kwargs"] == 0
    assert [v["key"] for v in verdicts] == [1, 2] and report["prompt_level_strict_acc"] == 0.5  # "a, b" has a comma
    # without extras the count is 0 and the numbers are the same
    alone = _write(tmp_path / "alone.jsonl", [{"prompt": GOOD["prompt"], "response": "a, b"},
                                              {"prompt": "Second prompt.", "response": "b"}])
    report2, _ = scoring.score_files(inp, alone)
    assert report2["ignored_responses"] == 0
    assert {k: v for k, v in report2.items() if k != "ignored_responses"} == \
        {k: v for k, v in report.items() if k != "ignored_responses"}
