"""gapo.compare.ledger: the grid's finished experiments kept in the repository, and the code fingerprint that says
which of them a workspace may continue."""
from __future__ import annotations

import json
import subprocess

import pytest

from gapo.compare import ledger as L

STAGES = {
    "prepare": {"cmd": "gapo prepare", "deps": ["gapo/data"], "params": ["seed"], "outs": ["data/sft"]},
    "sft": {"cmd": "gapo sft", "deps": ["gapo/train/sft.py", "data/sft"], "outs": ["checkpoints/sft"],
            "metrics": [{"metrics/sft.json": {"cache": False}}]},
    "other": {"cmd": "gapo other", "deps": ["gapo/other.py"], "outs": ["x"]},
    "evaluate": {"cmd": "gapo evaluate", "deps": ["gapo/eval", "checkpoints/sft", "metrics/sft.json"],
                 "outs": ["reports/s.jsonl"]},
}


def test_stage_chain_follows_outs_and_keeps_dvc_yaml_order():
    assert L.stage_chain(STAGES, "evaluate") == ["prepare", "sft", "evaluate"]
    assert L.stage_chain(STAGES, "sft") == ["prepare", "sft"]
    assert L.stage_chain(STAGES, "other") == ["other"]
    with pytest.raises(L.LedgerError, match="no stage 'nope'"):
        L.stage_chain(STAGES, "nope")


def test_git_blob_sha_is_gits_object_name():
    assert L.git_blob_sha(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `echo hello | git hash-object --stdin`
    assert L.git_blob_sha(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_code_fingerprint_counts_the_chains_code_only():
    blobs = {"gapo/data/a.py": "1", "gapo/train/sft.py": "2", "gapo/eval/e.py": "3", "gapo/other.py": "4",
             "gapo/evaluation.py": "5", "docs/x.md": "6", "gapo/compare/grid.py": "7"}
    fp = L.code_fingerprint(STAGES, "evaluate", blobs)
    assert len(fp) == 12 and fp == L.code_fingerprint(STAGES, "evaluate", dict(blobs))
    assert L.code_deps(STAGES, L.stage_chain(STAGES, "evaluate")) == ["gapo/data", "gapo/eval", "gapo/train/sft.py"]
    # outside the chain's code (docs, another stage's code, a sibling named like a dep, the driver, a `cache: false`
    # metric that an experiment commits): same code
    for path in ("docs/x.md", "gapo/other.py", "gapo/evaluation.py", "gapo/compare/grid.py", "metrics/sft.json"):
        assert L.code_fingerprint(STAGES, "evaluate", {**blobs, path: "changed"}) == fp, path
    # a dep file changed, added or removed, or a stage definition changed: other code
    for changed in ({**blobs, "gapo/eval/e.py": "9"}, {**blobs, "gapo/data/new.py": "9"},
                    {k: v for k, v in blobs.items() if k != "gapo/train/sft.py"}):
        assert L.code_fingerprint(STAGES, "evaluate", changed) != fp
    stages = json.loads(json.dumps(STAGES))
    stages["sft"]["params"] = ["sft"]
    assert L.code_fingerprint(stages, "evaluate", blobs) != fp


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": __import__("os").environ["PATH"]})


def test_fingerprint_of_a_commit_equals_the_workspaces_until_its_code_changes(tmp_path):
    import yaml

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}))
    for path, text in {"gapo/data/a.py": "a", "gapo/train/sft.py": "s", "gapo/eval/e.py": "e",
                       "docs/x.md": "d"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c1")
    at = L.fingerprint_at(tmp_path, "HEAD", "evaluate")
    assert L.fingerprint_of_workspace(tmp_path, "evaluate") == at
    (tmp_path / "docs/x.md").write_text("edited")  # not code of the chain
    assert L.fingerprint_of_workspace(tmp_path, "evaluate") == at
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/sft.json").write_text("{}")  # what an experiment commits beside the code
    _git(tmp_path, "add", "metrics")
    _git(tmp_path, "commit", "-qm", "an experiment's metrics")
    assert L.fingerprint_at(tmp_path, "HEAD", "evaluate") == at
    (tmp_path / "gapo/train/sft.py").write_text("s2")  # uncommitted, as a queued experiment would run it
    assert L.fingerprint_of_workspace(tmp_path, "evaluate") != at
    _git(tmp_path, "commit", "-qam", "c2")
    assert L.fingerprint_at(tmp_path, "HEAD", "evaluate") == L.fingerprint_of_workspace(tmp_path, "evaluate") != at
    assert L.fingerprint_at(tmp_path, "HEAD~1", "evaluate") == at


def _entry(name="cmp-abcd1234-sft-pp-s1", code="c0de", baseline="7" * 40):
    record = {"name": name, "method": "sft", "paradigm": "pp", "seed": 1, "rev": "e" * 40,
              "metrics": {"prompt_level_strict_acc": 0.5}}
    rows = [{"key": 3, "response": "long text", "follow_all_instructions_strict": True,
             "follow_instruction_list_strict": [True, False]}]
    return L.make_entry(record, "abcd1234", code, baseline, L.verdict_rows(rows), "2026-12-07T02:49:57+00:00")


def test_entries_round_trip_without_the_responses(tmp_path):
    e = _entry()
    assert e["samples"] == [{"key": "3", "follow_all_instructions_strict": True,
                             "follow_instruction_list_strict": [True, False]}]
    assert e["finished_at"] == "2026-12-07T02:49:57+00:00" and e["baseline"] == "7" * 40
    L.write_entry(tmp_path / "runs", e)
    L.write_entry(tmp_path / "runs", _entry("cmp-ffff0000-sft-pp-s1"))  # another grid
    assert L.read_ledger(tmp_path / "runs", "abcd1234") == {e["name"]: e}
    assert L.read_ledger(tmp_path / "nowhere", "abcd1234") == {}
    from gapo.compare.claims import per_prompt

    assert per_prompt(e["samples"], "inst_level_strict_acc") == {"3": (1, 2)}
    (tmp_path / "runs" / f"{e['name']}.json").write_text('{"schema": 1, "gr')
    with pytest.raises(L.LedgerError, match="not readable JSON"):
        L.read_ledger(tmp_path / "runs", "abcd1234")
    (tmp_path / "runs" / f"{e['name']}.json").write_text(json.dumps({**e, "grid": "ffff0000"}))
    with pytest.raises(L.LedgerError, match="is not an entry of grid abcd1234"):
        L.read_ledger(tmp_path / "runs", "abcd1234")


def test_check_same_code_names_the_other_code_and_the_way_on():
    entries = {"a": _entry("a"), "b": _entry("b", code="beef", baseline="1234567" + "0" * 33)}
    L.check_same_code({"a": entries["a"]}, "c0de", "abcd1234", "reports/compare_runs")
    with pytest.raises(L.LedgerError) as err:
        L.check_same_code(entries, "c0de", "abcd1234", "reports/compare_runs")
    msg = str(err.value)
    assert "holds 1 finished experiments of other code (code beef (commit 1234567): 1)" in msg
    assert "`git checkout 1234567`" in msg and "reports/compare_runs/cmp-abcd1234-*" in msg and "\n" not in msg
