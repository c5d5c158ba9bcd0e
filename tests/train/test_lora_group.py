"""LoRA (PEFT) on the policy and the critic-free group estimator, on the tiny profile: the reference is the base
with the adapter off (exactly), checkpoints are merged plain models, group advantages by hand, and adversarial
rounds with LoRA + group resume bit-exactly."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.train.test_ppo import make_gapo_workspace

LORA_GROUP = ("models.lora.enabled=true", "ppo.advantage_estimator=group", "ppo.n_samples_per_prompt=2",
              "ppo.rollout_batch_size=4", "ppo.micro_rollout_batch_size=8")


@pytest.fixture(scope="module")
def lora_ws(tmp_path_factory):
    return make_gapo_workspace(tmp_path_factory.mktemp("lora"), *LORA_GROUP)


def _batch(tok):
    ids = tok(["a red kettle for the kitchen", "write about a tent"], return_tensors="pt", padding=True)
    return ids["input_ids"], ids["attention_mask"]


def _perturbed_lora(ws, params):
    from gapo.models.adapters import add_lora
    from gapo.models.loading import load_policy

    model, tok = load_policy(ws.sft, params.models)
    model = add_lora(model, params.models.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at 0 (adapter = identity); give it something to merge
                p.normal_(0, 0.05)
    return model, tok


def test_adapter_off_reference_equals_the_base_model_exactly(lora_ws):
    from gapo.models.adapters import AdapterOff, adapter_state_dict, has_lora
    from gapo.models.loading import load_policy

    ws, params = lora_ws
    model, tok = _perturbed_lora(ws, params)
    base, _ = load_policy(ws.sft, params.models)
    assert has_lora(model) and not has_lora(base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable) and set(adapter_state_dict(model)) >= trainable
    ids, mask = _batch(tok)
    with torch.no_grad():
        ref = AdapterOff(model)(input_ids=ids, attention_mask=mask).logits
        expected = base(input_ids=ids, attention_mask=mask).logits
        adapted = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ref, expected)  # exactly the base model, no second copy
    assert (adapted - expected).abs().max() > 1e-3  # and the adapter does change the policy
    # switching the adapter off and on again leaves it trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_merged_checkpoint_is_a_plain_model_with_the_adapters_logits(lora_ws, tmp_path):
    from safetensors.torch import load_file

    from gapo.models.loading import load_policy
    from gapo.train import engine as E
    from gapo.train.ppo import ppo_optim

    ws, params = lora_ws
    model, tok = _perturbed_lora(ws, params)
    engine = E.build_train_engine(model, params, ppo_optim(params, 1e-4, 1), 10)
    out = E.save_hf(engine, tok, tmp_path / "merged")
    keys = set(load_file(str(out / "model.safetensors")))
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    merged, _ = load_policy(out, params.models)  # plain transformers, strict
    ids, mask = _batch(tok)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = merged(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_group_advantages_by_hand():
    from gapo.config import load_params
    from gapo.train.ppo import Rollout, Where, group_advantages

    params = load_params(None, ["ppo.reward_clip_range=[-10.0, 10.0]"])
    z = torch.zeros

    def rollout(score, n):
        return Rollout(prompt_ids=z(1, dtype=torch.long), response_ids=z(n, dtype=torch.long), log_probs=z(n),
                       values=z(n), advantages=z(n), returns=z(n), score=score)

    rollouts = [rollout(3.0, 2), rollout(1.0, 1), rollout(20.0, 1), rollout(0.0, 2)]
    kls = [torch.tensor([0.1, 0.2]), torch.tensor([0.4]), torch.tensor([0.0]), torch.tensor([0.0, 0.0])]
    group_advantages(rollouts, kls, 2, kl_coef=0.5, params=params, where=Where())
    # group 1: centred scores +2 / −2; rewards r_t = −β·KL_t, the centred score on the last token; summed to go
    torch.testing.assert_close(rollouts[0].advantages, torch.tensor([-0.05 - 0.1 + 2.0, -0.1 + 2.0]))
    torch.testing.assert_close(rollouts[1].advantages, torch.tensor([-0.2 - 2.0]))
    # group 2: 20 is clipped to reward_clip_range's 10 first, then centred: +10 / −10
    torch.testing.assert_close(rollouts[2].advantages, torch.tensor([10.0]))
    torch.testing.assert_close(rollouts[3].advantages, torch.tensor([-10.0, -10.0]))
    assert all(torch.equal(r.returns, r.advantages) for r in rollouts)  # no critic: returns are the advantages


def test_lora_group_rounds_resume_bit_exactly_and_keep_bf16_ratios_at_one(lora_ws, tmp_path):
    from safetensors.torch import load_file

    from gapo.paths import Workspace
    from gapo.train import adversarial as A

    ws, params = lora_ws
    summary = A.run_adversarial(params, ws)
    assert summary["rounds_completed"] == params.adversarial.rounds == 2
    for k in (1, 2):
        rd = ws.round_dir(k)
        assert not (rd / "critic").exists()  # critic-free
        info = json.loads((rd / "round.json").read_text())
        for episode in info["ppo"]:
            # π_θ/π_old before the first update: 1 up to the bf16 forward's rounding
            assert 0.0 <= episode["ratio_dev_first"] < 1e-3, episode["ratio_dev_first"]
    policy = load_file(str(ws.final / "policy" / "model.safetensors"))
    assert not any("lora_" in k for k in policy)
    sft = load_file(str(ws.sft / "model.safetensors"))
    assert any(not torch.equal(policy[k], sft[k]) for k in sft if k in policy)  # the merged adapter moved it

    other = Workspace(tmp_path / "ws")
    for rel in ("data", "models", "checkpoints/sft", "checkpoints/rm_warmup"):
        shutil.copytree(ws.root / rel, other.root / rel)
    assert A.run_adversarial(params, other, only_round=1)["rounds_run"] == [1]
    assert A.run_adversarial(params, other, only_round=2)["rounds_run"] == [2]
    for sub in ("policy", "reward"):
        a = load_file(str(ws.round_dir(2) / sub / "model.safetensors"))
        b = load_file(str(other.round_dir(2) / sub / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{sub}/{key} differs after resume"
