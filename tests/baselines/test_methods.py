"""Every baseline trains on the tiny profile in both paradigms, inside DeepSpeed, and leaves the layout evaluate and
register read: checkpoints/final/{policy,reward}, metrics/adversarial.json, plots/adversarial.csv."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.train.test_ppo import make_gapo_workspace

from gapo.config import ConfigError, load_params
from gapo.paths import Workspace
from gapo.train import baselines as B

FAST = ("baselines.max_steps=1", "baselines.max_pairs=8", "baselines.optim.micro_batch_size=4",
        "baselines.rm_optim.micro_batch_size=4", "baselines.max_length=192", "adversarial.eval_prompts=2",
        "adversarial.rounds=1", "runtime.threads=1")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    ws, params = make_gapo_workspace(tmp_path_factory.mktemp("baselines"), *FAST)
    return ws


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("paradigm", ["pp", "pr"])
@pytest.mark.parametrize("method", ["sft", "ppo", "dpo", "kto", "orpo", "simpo"])
def test_method_trains_and_writes_a_loadable_final_policy(base, tmp_path, method, paradigm):
    from gapo.models.loading import load_policy, load_reward_model
    from gapo.models.prompting import encode_prompt
    from gapo.stages import adversarial

    ws = Workspace(tmp_path)
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(base.root / sub, tmp_path / sub)
    params = load_params(None, [f"method={method}", f"paradigm={paradigm}", *FAST], "tiny")
    summary = adversarial(params, ws)  # the stage dispatches on params.method
    assert summary["method"] == method and summary["paradigm"] == paradigm
    final = ws.final
    info = json.loads((final / "final.json").read_text())
    assert info["method"] == method and info["paradigm"] == paradigm
    policy, tok = load_policy(final / "policy", params.models)
    load_reward_model(final / "reward", params.models)  # the encoder RM evaluate/register read
    import torch

    with torch.no_grad():
        out = policy(input_ids=torch.tensor([encode_prompt("Write a title.", tok)]))
    assert torch.isfinite(out.logits).all()
    changed = md5(final / "policy" / "model.safetensors") != md5(ws.sft / "model.safetensors")
    assert changed == (method != "sft"), f"{method}: policy weights changed={changed}"
    assert json.loads((ws.rounds / "method.json").read_text())["method"] == method  # the stage's DVC output exists
    metrics = json.loads(ws.metrics_file("adversarial").read_text())
    assert metrics["method"] == method and metrics["rounds_completed"] == 1
    with open(ws.plots / "adversarial.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1"] and rows[1]["verifier_pass_rate"] != ""
    if method == "ppo":  # the paper's PPO baseline: a decoder RM (policy architecture + scalar head)
        cfg = json.loads((final / "reward_decoder" / "config.json").read_text())
        assert cfg["architectures"][0].endswith("ForSequenceClassification") and cfg["model_type"] == "llama"
        assert metrics["rm_steps"] >= 1 and 0.0 <= metrics["rm_val_pair_accuracy"] <= 1.0
    if method in B.TRL_METHODS:
        assert metrics["steps"] == 1
    if paradigm == "pr":  # the classification view GAPO's encoder RM reads with paradigm pr
        assert (ws.data / "rm_pr" / "train.jsonl").is_file()


def test_baselines_have_no_rounds(base):
    from gapo.stages import adversarial

    with pytest.raises(ConfigError, match="method dpo has no rounds"):
        adversarial(load_params(None, ["method=dpo", *FAST], "tiny"), base, round=1)


def test_trainer_deepspeed_config_follows_the_engine_params():
    p = load_params(None, ["deepspeed.zero_stage=2", "deepspeed.torch_adam=false"])
    cfg = B.trainer_deepspeed_config(p, p.baselines.optim)
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["train_micro_batch_size_per_gpu"] == "auto"
    assert cfg["optimizer"]["params"]["lr"] == "auto" and cfg["bf16"] == {"enabled": False}


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_lora_baseline_saves_a_merged_plain_policy(base, tmp_path, method):
    """models.lora.enabled: TRL trains a PEFT adapter (DPO/KTO: reference = the base with the adapter off, no second
    copy); the saved policy is merged, loads with plain transformers and differs from SFT."""
    from safetensors.torch import load_file

    from gapo.models.loading import load_policy
    from gapo.stages import adversarial

    ws = Workspace(tmp_path)
    for sub in ("data", "models", "checkpoints"):
        shutil.copytree(base.root / sub, tmp_path / sub)
    params = load_params(None, [f"method={method}", "paradigm=pr", "models.lora.enabled=true",
                                "baselines.optim.learning_rate=1e-2", *FAST], "tiny")
    adversarial(params, ws)
    weights = load_file(str(ws.final / "policy" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    load_policy(ws.final / "policy", params.models)
    assert md5(ws.final / "policy" / "model.safetensors") != md5(ws.sft / "model.safetensors")
