"""Outputs (issue 13, item 8): a command never writes over one of its inputs or a tracked file, and the files of one
command land together or not at all (a failure writing --samples leaves --output as it was)."""
from __future__ import annotations

import json

import pytest

from gapo.errors import GapoError
from gapo.io import all_or_nothing, check_output_paths, write_json, write_jsonl


def test_all_or_nothing_commits_every_file_or_none(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.jsonl"
    a.write_text("old\n")
    with pytest.raises(RuntimeError):
        with all_or_nothing():
            write_json(a, {"new": 1})
            assert a.read_text() == "old\n"  # staged, not yet in place
            write_jsonl(b, [{"x": 1}])
            raise RuntimeError("the second output failed")
    assert a.read_text() == "old\n" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"], "temp files left behind"
    with all_or_nothing():
        write_json(a, {"new": 1})
        write_jsonl(b, [{"x": 1}])
    assert json.loads(a.read_text()) == {"new": 1} and b.read_text().strip() == '{"x": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl"]


def test_check_output_paths(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: gapo prepare\n    outs:\n      - data/sft\n")
    ok = {"--output": str(tmp_path / "out.json")}
    check_output_paths(ok, {"--input": str(inp)}, tmp_path)
    for outputs, match in [({"--output": str(inp)}, "is the --input file"),
                           ({"--output": str(tmp_path)}, "is a directory"),
                           ({"--output": str(tmp_path / "params.yaml")}, "params.yaml"),
                           ({"--output": str(tmp_path / "data" / "sft" / "train.jsonl")}, "`prepare` stage"),
                           ({"--output": str(tmp_path / "o"), "--samples": str(tmp_path / "o")}, "the same file"),
                           ({"--output": str(inp / "x.json")}, "is not a directory")]:
        with pytest.raises(GapoError, match=match):
            check_output_paths(outputs, {"--input": str(inp)}, tmp_path)


def test_a_failure_writing_samples_leaves_output_as_it_was(tmp_path, monkeypatch, capsys):
    from gapo import cli
    from gapo.eval import evaluate as ev

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"key": 1, "prompt": "Describe a mug.", "instruction_id_list": ["punctuation:no_comma"],
                               "kwargs": [{}]}) + "\n")
    resp = tmp_path / "resp.jsonl"
    resp.write_text(json.dumps({"prompt": "Describe a mug.", "response": "A mug."}) + "\n")
    out, samples = tmp_path / "out" / "metrics.json", tmp_path / "out" / "samples.jsonl"
    out.parent.mkdir()
    out.write_text('{"previous": true}\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(samples))

    monkeypatch.setattr(ev, "sample_records", broken)
    argv = ["--workdir", str(ws), "evaluate", "--input", str(inp), "--responses", str(resp), "--output", str(out),
            "--samples", str(samples)]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err, err[-2000:]
    assert out.read_text() == '{"previous": true}\n' and not samples.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"], "temp files left behind"
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    assert cli.main(argv) == 0
    assert "prompt_level_strict_acc" in json.loads(out.read_text()) and samples.is_file()
