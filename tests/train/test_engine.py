"""DeepSpeed engines on CPU: config mapping, the LR schedule, ZeRO stages, accumulation, resume, inference."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.config import DeepSpeedConfig, OptimConfig
from gapo.train import engine as E


def _tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def _batches(n, bs=4, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (bs, seq), generator=g) for _ in range(n)]


def _train(engine, batches):
    losses = []
    for x in batches:
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def test_ds_config_maps_params():
    ds = DeepSpeedConfig(zero_stage=3, precision="bf16", offload_optimizer=True, offload_param=True,
                         gradient_clipping=0.5)
    opt = OptimConfig(micro_batch_size=4, gradient_accumulation_steps=3)
    cfg = E.ds_config(ds, opt, world=2)
    assert cfg["train_batch_size"] == 24 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"]["enabled"] and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["zero_force_ds_cpu_optimizer"] is False and "optimizer" not in cfg  # torch AdamW: no JIT
    cfg = E.ds_config(DeepSpeedConfig(zero_stage=1, torch_adam=False), opt, world=1)
    assert cfg["optimizer"]["type"] == "AdamW" and "offload_optimizer" not in cfg["zero_optimization"]


def test_cosine_with_min_lr_schedule_golden():
    opt = OptimConfig(learning_rate=1.0, warmup_ratio=0.1, min_lr_ratio=0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=1.0)
    sched = E.cosine_with_min_lr(o, 20, opt)
    lrs = []
    for _ in range(25):
        lrs.append(o.param_groups[0]["lr"])
        o.step()
        sched.step()
    warm = math.ceil(0.1 * 20)
    expect = [(s + 1) / (warm + 1) if s < warm else
              0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (20 - warm)))) for s in range(25)]
    assert lrs == pytest.approx(expect, abs=1e-9)
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[0] > 0  # the first update is not wasted at LR 0
    # After the warmup and within the run it is exactly transformers' schedule (the one OpenRLHF uses).
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    o2 = torch.optim.SGD([p], lr=1.0)
    ref_sched = get_cosine_with_min_lr_schedule_with_warmup(o2, warm, 20, min_lr_rate=0.1)
    ref = []
    for _ in range(21):
        ref.append(o2.param_groups[0]["lr"])
        o2.step()
        ref_sched.step()
    assert lrs[warm:21] == pytest.approx(ref[warm:], abs=1e-9)


def test_optimizer_groups_skip_decay_on_norms_and_biases():
    model = _tiny_lm()
    o = E.build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for p in o.param_groups[0]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == ("norm" not in name and p.ndim >= 2), name
    assert o.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16"),
                                             (3, "bf16")])
def test_zero_stages_train(stage, precision):
    dtype = "bfloat16" if precision == "bf16" else "float32"
    params = ta.tiny_params(f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}",
                            f"models.dtype={dtype}")
    opt = OptimConfig(learning_rate=1e-2, micro_batch_size=4, warmup_ratio=0.0)
    engine = E.build_train_engine(_tiny_lm(), params, opt, num_training_steps=8)
    x = _batches(1)[0]
    losses = _train(engine, [x] * 8)
    assert losses[-1] < losses[0] - 0.3, losses


def test_offload_optimizer_with_torch_adam_needs_no_jit():
    params = ta.tiny_params("deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true")
    engine = E.build_train_engine(_tiny_lm(), params, OptimConfig(learning_rate=1e-2, micro_batch_size=4,
                                                                  warmup_ratio=0.0), 6)
    x = _batches(1)[0]
    losses = _train(engine, [x] * 6)
    assert losses[-1] < losses[0]


def test_gradient_accumulation_matches_one_big_batch():
    """2 micro-batches of 4 accumulated == 1 batch of 8 (equal-length rows, mean losses): the same weights."""
    params = ta.tiny_params()
    x = _batches(1, bs=8)[0]
    big = E.build_train_engine(_tiny_lm(), params, OptimConfig(learning_rate=1e-2, micro_batch_size=8,
                                                               warmup_ratio=0.0), 3)
    acc = E.build_train_engine(_tiny_lm(), params, OptimConfig(learning_rate=1e-2, micro_batch_size=4,
                                                               gradient_accumulation_steps=2, warmup_ratio=0.0), 3)
    for _ in range(3):
        _train(big, [x])
        _train(acc, [x[:4], x[4:]])
    assert big.global_steps == acc.global_steps == 3
    for a, b in zip(big.module.parameters(), acc.module.parameters()):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)  # Adam amplifies float noise; a bug is ~lr=1e-2


@pytest.mark.parametrize("stage", [0, 2])
def test_resume_continues_exactly(tmp_path, stage):
    """Train 3 steps, save, train 3 more; a fresh engine loaded from the save reproduces those 3 losses."""
    params = ta.tiny_params(f"deepspeed.zero_stage={stage}")
    opt = OptimConfig(learning_rate=5e-3, micro_batch_size=4)
    batches = _batches(6)
    first = E.build_train_engine(_tiny_lm(), params, opt, 6)
    _train(first, batches[:3])
    E.save_engine_state(first, tmp_path / "state", client_state={"step": 3})
    E.save_hf(first, None, tmp_path / "hf")
    expected = _train(first, batches[3:])
    from transformers import LlamaForCausalLM

    second = E.build_train_engine(LlamaForCausalLM.from_pretrained(tmp_path / "hf"), params, opt, 6)
    assert E.load_engine_state(second, tmp_path / "state")["step"] == 3
    assert second.global_steps == 3
    got = _train(second, batches[3:])
    assert got == pytest.approx(expected, abs=1e-5)
    assert second.get_lr() == pytest.approx(first.get_lr())


def test_load_engine_state_missing_dir_is_model_error(tmp_path):
    from gapo.errors import ModelError

    engine = E.build_train_engine(_tiny_lm(), ta.tiny_params(), OptimConfig(micro_batch_size=4), 2)
    with pytest.raises(ModelError, match="no DeepSpeed state"):
        E.load_engine_state(engine, tmp_path)


@pytest.mark.parametrize("stage", [0, 3])
def test_inference_engine_is_frozen_and_matches(stage):
    params = ta.tiny_params(f"deepspeed.zero_stage={stage}")
    model = _tiny_lm(3)
    x = _batches(1)[0]
    with torch.no_grad():
        ref = model(input_ids=x).logits
    frozen = E.build_inference_engine(copy.deepcopy(model), params)
    assert not any(p.requires_grad for p in E.unwrap(frozen).parameters())
    with torch.no_grad():
        torch.testing.assert_close(frozen(input_ids=x).logits, ref)


def test_launcher_commands_and_env(monkeypatch):
    ds = DeepSpeedConfig(launcher="torchrun", num_processes=2, master_port=29611)
    cmd = E.launcher_command(["--workdir", "w", "sft"], ds)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert cmd[-4:] == ["gapo.cli", "--workdir", "w", "sft"]
    ds = DeepSpeedConfig(launcher="deepspeed", num_processes=2)
    assert "--module" in E.launcher_command(["sft"], ds)
    E.init_distributed()
    env = E.launcher_env()
    if E._SET_BY_US in __import__("os").environ:  # we set the 1-process rendezvous: children must not inherit it
        assert "RANK" not in env and "WORLD_SIZE" not in env and "MASTER_PORT" not in env


def test_the_process_group_is_torn_down_at_exit():
    """init_distributed registers the teardown: in a fresh process the group is up after it and gone after the
    exit hook runs, and the process exits 0 (a gloo group left to interpreter teardown once aborted a rank)."""
    import os
    import subprocess
    import sys

    code = ("import atexit, torch.distributed as dist\n"
            "from gapo.train import engine as E\n"
            "E.init_distributed()\n"
            "assert dist.is_initialized()\n"
            "atexit._run_exitfuncs()\n"
            "assert not dist.is_initialized()\n"
            "print('torn down')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torn down" in proc.stdout
