"""`gapo evaluate --input --responses --output`: scoring-only mode end to end through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gapo.cli import main

CASES_PATH = Path(__file__).parent / "data" / "ifeval_cases.jsonl"


@pytest.fixture
def files(tmp_path):
    cases = [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    inp = tmp_path / "input.jsonl"
    inp.write_text("".join(json.dumps({k: c[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")}) + "\n"
                           for c in cases), encoding="utf-8")
    (tmp_path / "params.yaml").write_text("", encoding="utf-8")  # all defaults
    resp = tmp_path / "responses.jsonl"
    resp.write_text("".join(json.dumps({"prompt": c["prompt"], "response": c["response"]}) + "\n" for c in cases),
                    encoding="utf-8")
    return cases, inp, resp


def test_scoring_only_cli_end_to_end(tmp_path, files, capsys):
    cases, inp, resp = files
    out = tmp_path / "out" / "scores.json"
    samples = tmp_path / "samples.jsonl"
    rc = main(["--params", str(tmp_path / "params.yaml"), "--workdir", str(tmp_path), "evaluate", "--input", str(inp),
               "--responses", str(resp), "--output", str(out), "--samples", str(samples)])
    assert rc == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    printed = json.loads(capsys.readouterr().out)
    assert printed == report
    n = len(cases)
    assert report["num_prompts"] == n and report["mode"] == "score_only"
    assert report["prompt_level_strict_acc"] == pytest.approx(sum(all(c["expect_strict"]) for c in cases) / n)
    assert report["prompt_level_loose_acc"] == pytest.approx(sum(all(c["expect_loose"]) for c in cases) / n)
    flat_s = [x for c in cases for x in c["expect_strict"]]
    flat_l = [x for c in cases for x in c["expect_loose"]]
    assert report["inst_level_strict_acc"] == pytest.approx(sum(flat_s) / len(flat_s))
    assert report["inst_level_loose_acc"] == pytest.approx(sum(flat_l) / len(flat_l))
    assert "keywords:existence" in report["by_instruction"] and "startend" in report["by_category"]
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in rows] == [c["key"] for c in cases]
    assert [r["follow_instruction_list_loose"] for r in rows] == [c["expect_loose"] for c in cases]
    # nothing written into the pipeline's metrics/ in scoring-only mode
    assert not (tmp_path / "metrics").exists()


def test_cli_bad_input_is_one_line_exit_2(tmp_path, files):
    _, inp, resp = files
    lines = inp.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[2])
    bad["kwargs"] = bad["kwargs"] + [{}]
    lines[2] = json.dumps(bad)
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "gapo.cli", "--params", str(tmp_path / "params.yaml"), "evaluate",
                           "--input", str(inp), "--responses", str(resp)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: IFEval input ") and f"{inp} line 3: field 'kwargs': expected one dict per instruction id (1), got 2" in err


def test_cli_missing_default_input_names_the_fix(tmp_path, files):
    _, _, resp = files
    rc_err = subprocess.run([sys.executable, "-m", "gapo.cli", "--params", str(tmp_path / "params.yaml"), "--workdir",
                             str(tmp_path), "evaluate", "--responses", str(resp)], capture_output=True, text=True, timeout=300)
    assert rc_err.returncode == 2
    assert "data/ifeval/test.jsonl: file not found (run `gapo prepare` first" in rc_err.stderr
