"""Strict weight loading (issue 13, item 3): a checkpoint whose weights do not fit the model it configures never loads
as random weights. Truncated, empty, header-bomb, foreign, missing, extra and wrong-shape safetensors fail at
`gapo models` (from the headers, no weight read) and at every load, with one line naming the file and the first bad
key; nothing is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gapo.config import ModelsConfig
from gapo.errors import ModelError


def _variant(src: Path, dest: Path, kind: str) -> Path:
    shutil.copytree(src, dest)
    f = dest / "model.safetensors"
    raw = f.read_bytes()
    sd = load_file(str(f))
    first = sorted(sd)[0]
    if kind == "truncated":
        f.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "header_bomb":  # claims a 1 TB JSON header
        f.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    elif kind == "garbage_header":
        f.write_bytes((7).to_bytes(8, "little") + b"notjson")
    elif kind == "foreign":  # valid safetensors, none of the model's keys: loaded as random weights before
        save_file({"foo.weight": torch.zeros(3)}, str(f), metadata={"format": "pt"})
    elif kind == "missing_key":
        save_file({k: v for k, v in sd.items() if k != first}, str(f), metadata={"format": "pt"})
    elif kind == "extra_key":
        save_file({**sd, "extra.weight": torch.zeros(2)}, str(f), metadata={"format": "pt"})
    elif kind == "wrong_shape":
        save_file({**sd, first: torch.zeros(3, 3)}, str(f), metadata={"format": "pt"})
    elif kind == "bad_offsets":  # header says 4 bytes for a tensor of 1000 floats
        header = {"x": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4]}}
        blob = json.dumps(header).encode()
        f.write_bytes(len(blob).to_bytes(8, "little") + blob + b"\0" * 4)
    return dest


# kind -> substrings of the one line (after "<role> '<dir>': model.safetensors: ")
KINDS = {
    "truncated": ["truncated"],
    "empty": ["truncated or empty", "0 bytes"],
    "header_bomb": ["header length 1000000000000 bytes", "header bomb"],
    "garbage_header": ["unreadable safetensors header"],
    "foreign": ["is missing from the checkpoint", "random initialisation"],
    "missing_key": ["is missing from the checkpoint", "missing; they would be left at random"],
    "extra_key": ["'extra.weight' is not a weight of this model"],
    "wrong_shape": ["has the wrong shape", "checkpoint (3, 3)"],
    "bad_offsets": ["tensor 'x'", "4 bytes for a F32 tensor of shape [1000]"],
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("role", ["policy", "reward"])
def test_load_refuses_bad_weights_with_file_and_key(kind, role, tiny_model_dirs, tmp_path):
    from gapo.models.loading import load_policy, load_reward_model

    src = tiny_model_dirs[0 if role == "policy" else 1]
    bad = _variant(src, tmp_path / kind, kind)
    load = load_policy if role == "policy" else load_reward_model
    with pytest.raises(ModelError) as err:
        load(bad, ModelsConfig())
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{role} '{bad}': model.safetensors: "), msg
    for part in KINDS[kind]:
        assert part in msg, (part, msg)


def test_good_models_and_a_fresh_reward_head_still_load(tiny_model_dirs, tmp_path):
    """A headless encoder (e.g. all-MiniLM's BertModel weights) as reward model gets a new head: that is the one
    case where parameters are initialised, and only the head's."""
    from gapo.models.loading import load_policy, load_reward_model

    policy, reward = tiny_model_dirs
    load_policy(policy, ModelsConfig())
    load_reward_model(reward, ModelsConfig())
    headless = tmp_path / "headless"
    shutil.copytree(reward, headless)
    cfg = json.loads((headless / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (headless / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(reward / "model.safetensors"))
    base = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    assert base and len(base) < len(sd)
    save_file(base, str(headless / "model.safetensors"), metadata={"format": "pt"})
    # the layout written above is BertModel's: no "bert." prefix, no classifier
    model, _ = load_reward_model(headless, ModelsConfig())
    got = dict(model.state_dict())
    assert all(torch.equal(got[f"bert.{k}"], v) for k, v in base.items() if f"bert.{k}" in got)
    # ... but a headless encoder missing one of its own weights is refused
    first = sorted(base)[0]
    save_file({k: v for k, v in base.items() if k != first}, str(headless / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match="is missing from the checkpoint"):
        load_reward_model(headless, ModelsConfig())


@pytest.mark.parametrize("kind", ["truncated", "header_bomb", "foreign", "wrong_shape", "extra_key"])
def test_gapo_models_refuses_bad_weights_and_writes_nothing(kind, tiny_model_dirs, tmp_path, capsys, monkeypatch):
    from gapo import cli

    policy, reward = tiny_model_dirs
    bad = _variant(policy, tmp_path / "in" / kind, kind)
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), "models", "-S", f"models.policy={bad}", "-S", f"models.reward={reward}"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert [x for x in lines if x.startswith("error: ")] == [lines[-1]] and "model.safetensors" in lines[-1], lines
    assert [p.name for p in ws.iterdir() if p.name != ".gapo"] == []


def test_evaluate_never_scores_random_weights(tiny_model_dirs, tmp_path, capsys, monkeypatch):
    """The issue's case: a checkpoint holding none of the model's keys; `evaluate` exited 0 and wrote metrics."""
    from gapo import cli

    bad = _variant(tiny_model_dirs[0], tmp_path / "foreign", "foreign")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"key": 1, "prompt": "Describe a mug.", "instruction_id_list": ["punctuation:no_comma"],
                               "kwargs": [{}]}) + "\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), "evaluate", "--input", str(inp), "-S", f"evaluate.model={bad}"])
    err = capsys.readouterr().err
    assert rc == 2 and "is missing from the checkpoint" in err, err[-2000:]
    assert not (ws / "metrics").exists() and not (ws / "reports").exists()
