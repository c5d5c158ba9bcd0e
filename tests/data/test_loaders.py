"""User data (params `data.user`): malformed input fails with one line naming file, line, field and expectation,
and leaves nothing behind; well-formed input replaces the generated records of its kind."""
from __future__ import annotations

import json
import shutil

import pytest
from tests.data.data_helpers import records, small_params

from gapo.data.prepare import run_prepare
from gapo.errors import DataError
from gapo.io import read_json, write_jsonl
from gapo.paths import Workspace

GOOD = {"key": 1, "prompt": "Describe a mug.", "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": 50, "relation": "less than"}]}


def _line(**changes) -> bytes:
    rec = {**GOOD, **changes}
    return (json.dumps({k: v for k, v in rec.items() if v is not ...}) + "\n").encode()


def _pp(**changes) -> bytes:
    rec = {"response": "A small red mug.",
           "chosen_prompt": "Describe it.\nRequirements:\nAnswer with less than 9 words.",
           "rejected_prompt": "Describe it.\nRequirements:\nAnswer with less than 3 words.",
           "perturbation": "modify", "perturbed_instruction_id": "length_constraints:number_words",
           "chosen_instruction_id_list": ["length_constraints:number_words"],
           "chosen_kwargs": [{"num_words": 9, "relation": "less than"}],
           "rejected_instruction_id_list": ["length_constraints:number_words"],
           "rejected_kwargs": [{"num_words": 3, "relation": "less than"}], **changes}
    return (json.dumps(rec) + "\n").encode()


# (case, data.user param, file content, substrings the one-line message must contain)
CASES = [
    ("bad_json", "ifeval", b'{"key": 1, "prompt": "x"\n', ["line 1", "invalid JSON"]),
    ("not_an_object", "ifeval", b"[1, 2]\n", ["line 1", "expected a JSON object"]),
    ("missing_field", "ifeval", _line(prompt=...), ["line 1", "field 'prompt'", "missing"]),
    ("wrong_type", "ifeval", _line(prompt=5), ["field 'prompt'", "expected a string, got integer"]),
    ("key_not_int", "ifeval", _line(key="7"), ["field 'key'", "expected an integer"]),
    ("key_bool", "ifeval", _line(key=True), ["field 'key'", "expected an integer, got boolean"]),
    ("unknown_instruction", "ifeval", _line(instruction_id_list=["keywords:rhymes"]),
     ["field 'instruction_id_list[0]'", "unknown IFEval instruction id 'keywords:rhymes'"]),
    ("kwargs_count", "ifeval", _line(kwargs=[{}, {}]), ["field 'kwargs'", "one dict per instruction id (1), got 2"]),
    ("unknown_argument", "ifeval", _line(kwargs=[{"num_word": 5, "num_words": 5, "relation": "at least"}]),
     ["field 'kwargs[0].num_word'", "not an argument of length_constraints:number_words"]),
    ("missing_argument", "ifeval", _line(kwargs=[{"num_words": 5}]),
     ["field 'kwargs[0]'", "missing argument(s) relation"]),
    ("bad_relation", "ifeval", _line(kwargs=[{"num_words": 5, "relation": "more than"}]),
     ["field 'kwargs[0].relation'", "expected one of"]),
    ("argument_type", "ifeval", _line(kwargs=[{"num_words": "80", "relation": "at least"}]),
     ["field 'kwargs[0].num_words'", "expected an integer, got string"]),
    ("zero_count", "ifeval", _line(instruction_id_list=["detectable_format:number_bullet_lists"],
                                   kwargs=[{"num_bullets": 0}]),
     ["field 'kwargs[0].num_bullets'", "positive integer"]),
    ("bad_letter", "ifeval", _line(instruction_id_list=["keywords:letter_frequency"],
                                   kwargs=[{"letter": "ab", "let_frequency": 2, "let_relation": "at least"}]),
     ["field 'kwargs[0].letter'", "one letter"]),
    ("regex_keyword", "ifeval", _line(instruction_id_list=["keywords:existence"], kwargs=[{"keywords": ["soft(ness"]}]),
     ["field 'kwargs[0].keywords'", "not a valid pattern"]),
    ("empty_file", "ifeval", b"", ["file is empty"]),
    ("blank_lines_only", "ifeval", b"\n   \n\n", ["file is empty"]),
    ("huge_line", "ifeval", _line() + b'{"prompt": "' + b"x" * 5000 + b'"}\n', ["line 2", "longer than"]),
    ("not_utf8", "ifeval", b'{"key": 1, "prompt": "caf\xe9"}\n', ["line 1", "not UTF-8"]),
    ("duplicate_key", "ifeval", _line() + _line(), ["line 2", "field 'key'", "duplicate key 1"]),
    ("empty_prompt", "ifeval", _line(prompt="   "), ["field 'prompt'", "non-empty"]),
    ("bad_split", "ifeval", _line(split="dev"), ["field 'split'", "expected one of"]),
    ("sft_not_satisfied", "sft",
     b'{"prompt": "p", "completion": "far too many words for this limit here", '
     b'"instruction_id_list": ["length_constraints:number_words"], '
     b'"kwargs": [{"num_words": 3, "relation": "less than"}]}\n',
     ["field 'kwargs[0]'", "does not satisfy length_constraints:number_words"]),
    ("pp_rejected_satisfied", "preferential_prompt", _pp(rejected_kwargs=[{"num_words": 30, "relation": "less than"}]),
     ["field 'rejected_instruction_id_list'", "must be violated"]),
    ("pp_bad_perturbation", "preferential_prompt", _pp(perturbation="swap"), ["field 'perturbation'"]),
    ("pr_missing_rejected", "preferential_response",
     b'{"prompt": "p", "chosen": "ok", "instruction_id_list": [], "kwargs": []}\n', ["field 'rejected'", "missing"]),
    # -- issue 13: inputs that crashed, randomised a score or contradicted themselves ------------------------------
    ("redos_keyword", "ifeval", _line(instruction_id_list=["keywords:existence"], kwargs=[{"keywords": ["(a+)+$"]}]),
     ["field 'kwargs[0].keywords'", "not a valid pattern", "plain text"]),
    ("redos_frequency_keyword", "ifeval", _line(instruction_id_list=["keywords:frequency"],
                                                kwargs=[{"keyword": "(x|xx)+y", "frequency": 2,
                                                         "relation": "at least"}]),
     ["field 'kwargs[0].keyword'", "not a valid pattern"]),
    ("pattern_too_long", "ifeval", _line(instruction_id_list=["detectable_content:postscript"],
                                         kwargs=[{"postscript_marker": "P" * 300}]),
     ["field 'kwargs[0].postscript_marker'", "300 characters; at most 200"]),
    ("nth_paragraph_random", "ifeval", _line(instruction_id_list=["length_constraints:nth_paragraph_first_word"],
                                             kwargs=[{"num_paragraphs": 2, "nth_paragraph": 5, "first_word": "hi"}]),
     ["field 'kwargs[0].nth_paragraph'", "5 > num_paragraphs 2", "random value"]),
    ("unknown_language", "ifeval", _line(instruction_id_list=["language:response_language"],
                                         kwargs=[{"language": "xx"}]),
     ["field 'kwargs[0].language'", "unknown language code 'xx'"]),
    ("huge_int_key", "ifeval", _line(key=10**30), ["field 'key'", "out of range"]),
    ("huge_int_argument", "ifeval", _line(kwargs=[{"num_words": 10**40, "relation": "less than"}]),
     ["field 'kwargs[0].num_words'", "out of range"]),
    ("int_digits_limit", "ifeval", _line().replace(b"50", b"9" * 4400), ["line 1", "invalid JSON", "digits"]),
    ("deep_json", "ifeval", b"[" * 500 + b"]" * 500 + b"\n", ["line 1", "nested deeper than 64"]),
    ("lone_surrogate", "ifeval", _line(prompt="bad \ud800 text"), ["line 1", "lone surrogate"]),
    ("duplicate_json_field", "ifeval", b'{"key": 1, "key": 2, "prompt": "p"}\n',
     ["line 1", "field 'key'", "given twice"]),
    ("sft_duplicate_key", "sft",
     b'{"key": 3, "prompt": "p", "completion": "ok", "instruction_id_list": [], "kwargs": []}\n' * 2,
     ["line 2", "field 'key'", "duplicate key 3"]),
    ("pp_same_prompts", "preferential_prompt",
     _pp(rejected_prompt="Describe it.\nRequirements:\nAnswer with less than 9 words."),
     ["field 'rejected_prompt'", "the same text as chosen_prompt"]),
    ("pr_same_responses", "preferential_response",
     b'{"prompt": "p", "chosen": "ok then", "rejected": "ok  then", "instruction_id_list": [], "kwargs": []}\n',
     ["field 'rejected'", "the same text as chosen"]),
    ("completion_too_long", "sft", json.dumps({"prompt": "p", "completion": "word " * 4500,
                                                "instruction_id_list": [], "kwargs": []}).encode() + b"\n",
     ["field 'completion'", "22500 characters", "at most 20000"]),
]


def _assert_nothing_left(ws: Workspace) -> None:
    assert not ws.data.exists()
    assert not ws.metrics_file("prepare").exists()
    assert [p.name for p in ws.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case,param,content,expect", CASES, ids=[c[0] for c in CASES])
def test_malformed_user_file(tmp_path, case, param, content, expect):
    src = tmp_path / "in" / f"{case}.jsonl"
    src.parent.mkdir()
    src.write_bytes(content)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    long_lines = case in ("completion_too_long", "int_digits_limit")
    params = small_params(f"data.user.{param}={src}", f"data.user.max_line_bytes={30000 if long_lines else 1000}")
    with pytest.raises(DataError) as err:
        run_prepare(params, ws)
    msg = str(err.value)
    assert "\n" not in msg and str(src) in msg
    for part in expect:
        assert part in msg, (part, msg)
    if case not in ("empty_file", "blank_lines_only"):
        assert "line " in msg
    if case not in ("bad_json", "empty_file", "blank_lines_only", "huge_line", "not_utf8", "int_digits_limit",
                    "deep_json", "lone_surrogate"):
        assert "field '" in msg
    _assert_nothing_left(ws)


def test_missing_file_and_bad_directory(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found \(data\.user\.sft\)"):
        run_prepare(small_params(f"data.user.sft={tmp_path / 'nope.jsonl'}"), ws)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="directory holds neither"):
        run_prepare(small_params(f"data.user.ifeval={tmp_path / 'empty_dir'}"), ws)
    assert not ws.data.exists()


def test_bad_hf_dataset_names_split_row_and_field(tmp_path):
    import datasets

    bad = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"key": 1, "prompt": "p"}])})
    bad.save_to_disk(str(tmp_path / "hf"))
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataError) as err:
        run_prepare(small_params(f"data.user.ifeval={tmp_path / 'hf'}"), ws)
    assert "split train row 0: field 'instruction_id_list': missing" in str(err.value)


def test_failure_keeps_the_previous_data(tmp_path, prepared):
    ws0, _ = prepared
    ws = Workspace(tmp_path)
    shutil.copytree(ws0.data, ws.data)
    before = {p: p.read_bytes() for p in ws.data.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{oops\n")
    with pytest.raises(DataError):
        run_prepare(small_params(f"data.user.ifeval={bad}"), ws)
    assert {p: p.read_bytes() for p in ws.data.rglob("*") if p.is_file()} == before


def test_cli_prints_one_error_line(tmp_path, capsys, monkeypatch):
    from gapo import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_line(kwargs=[{"num_words": 5}]))
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["--workdir", str(tmp_path / "ws"), "prepare", "-S", f"data.user.ifeval={bad}",
                   "-S", "data.num_products=10", "-S", "data.test_prompts=5"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1
    assert f"{bad} line 1: field 'kwargs[0]': missing argument(s) relation" in lines[0]
    assert not (tmp_path / "ws" / "data").exists()


def test_user_files_replace_their_kinds(tmp_path, prepared):
    """ifeval jsonl with `split` fields, an SFT directory of split files, PP as a saved DatasetDict, PR without
    the optional fields: each replaces the generated kind; RM is derived from the user PP pairs."""
    ws0, _ = prepared
    src = tmp_path / "src"
    src.mkdir()
    ifeval_rows = records(ws0, "ifeval", "test")[:6]
    write_jsonl(src / "ifeval.jsonl", [{**r, "split": ["train", "validation", "test"][i % 3]}
                                        for i, r in enumerate(ifeval_rows)])
    (src / "sft").mkdir()
    write_jsonl(src / "sft" / "train.jsonl", records(ws0, "sft", "train")[:5])
    write_jsonl(src / "sft" / "validation.jsonl", records(ws0, "sft", "validation")[:2])
    shutil.copytree(ws0.hf_dataset("pp"), src / "pp_hf")
    pr_rows = [{k: v for k, v in r.items() if k not in ("key", "category", "broken_instruction_id")}
               for r in records(ws0, "pr", "train")[:4]]
    write_jsonl(src / "pr.jsonl", pr_rows)

    ws = Workspace(tmp_path / "ws")
    params = small_params("data.num_products=20", "data.test_prompts=10",
                          f"data.user.ifeval={src / 'ifeval.jsonl'}", f"data.user.sft={src / 'sft'}",
                          f"data.user.preferential_prompt={src / 'pp_hf'}",
                          f"data.user.preferential_response={src / 'pr.jsonl'}")
    run_prepare(params, ws)
    assert [r["key"] for r in records(ws, "ifeval", "train")] == [ifeval_rows[0]["key"], ifeval_rows[3]["key"]]
    assert records(ws, "ifeval", "test")[0]["prompt"] == ifeval_rows[2]["prompt"]
    assert records(ws, "sft", "train") == records(ws0, "sft", "train")[:5]
    assert records(ws, "sft", "test") == []
    assert records(ws, "pp") == records(ws0, "pp")
    assert len(records(ws, "rm")) == 2 * len(records(ws0, "pp"))
    pr = records(ws, "pr")
    assert len(pr) == 4 and all(r["category"] == "user" for r in pr)
    stats = read_json(ws.data_stats)
    assert stats["sources"]["pp"].startswith("user:") and stats["sources"]["rm"] == "derived from user pp"
    assert stats["sources"]["pr"].startswith("user:")
