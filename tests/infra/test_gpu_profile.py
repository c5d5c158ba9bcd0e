"""profiles/gpu.yaml: it validates through the schema, keeps the default pipeline (SmolLM2, the same stages) with bf16,
ZeRO-2 and at least 10x the CPU default's budgets, and its stages start on CPU with the tiny models swapped in
(no GPU was lent to run it for real: docs/running.md, "The gpu profile")."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from gapo.config import load_params

# The tiny profile's models and the test suite's extra-small data and steps, on CPU: everything else (bf16, ZeRO-2,
# the SmolLM2 prompt and batch settings the tiny model can take) stays the gpu profile's.
TINY_ON_CPU = ["runtime.device=cpu", "runtime.threads=1", "runtime.decode_threads=1",
               "models.policy=builtin:llama-tiny", "models.reward=builtin:bert-tiny", "models.lora.enabled=false",
               "models.policy_arch={hidden_size: 128, num_layers: 4, num_heads: 4, intermediate_size: 512, "
               "vocab_size: 2048}",
               "models.reward_arch={hidden_size: 128, num_layers: 2, num_heads: 2, intermediate_size: 512, "
               "vocab_size: 2048}",
               "data.num_products=40", "data.prompts_per_product=1", "data.test_prompts=12", "data.workers=1",
               "sft.max_steps=2", "sft.eval_examples=4", "sft.optim.micro_batch_size=4", "sft.max_seq_len=128",
               "reward.warmup_examples=32", "reward.eval_examples=8", "reward.max_length=128",
               "reward.freeze_layers=0", "reward.optim.micro_batch_size=8"]


def rollouts_per_round(p) -> int:
    return p.ppo.rollout_batch_size * p.ppo.n_samples_per_prompt * p.ppo.episodes_per_round


def sft_examples(p) -> int:
    return p.sft.max_steps * p.sft.optim.micro_batch_size * p.sft.optim.gradient_accumulation_steps


def test_gpu_profile_is_the_default_pipeline_at_ten_times_the_budget():
    cpu, gpu = load_params(None), load_params(None, profile="gpu")
    assert gpu.models.policy == cpu.models.policy == "builtin:smollm2" and gpu.models.lora.enabled
    assert (gpu.deepspeed.zero_stage, gpu.deepspeed.precision, gpu.models.dtype) == (2, "bf16", "bfloat16")
    assert not gpu.models.trust_remote_code and not gpu.models.allow_pickle
    assert rollouts_per_round(gpu) >= 10 * rollouts_per_round(cpu)
    assert gpu.reward.warmup_examples >= 10 * cpu.reward.warmup_examples
    assert sft_examples(gpu) >= 10 * sft_examples(cpu)
    # ~3.8 RM rows per product (docs/data.md): the warm-up budget is there to be drawn
    assert gpu.data.num_products * gpu.data.prompts_per_product * 1.5 >= gpu.reward.warmup_examples
    # the method's knobs are the default's: only budgets, precision and placement change
    for section in ("ppo", "reward", "adversarial"):
        for knob in ("actor_learning_rate", "init_kl_coef", "advantage_estimator", "missing_eos_penalty",
                     "freeze_layers", "score", "prompt_facts", "rounds", "prompts_per_round", "fake_ratio"):
            if hasattr(getattr(cpu, section), knob):
                assert getattr(getattr(gpu, section), knob) == getattr(getattr(cpu, section), knob), (section, knob)


def test_gpu_profile_config_command():
    proc = subprocess.run([sys.executable, "-m", "gapo.cli", "--profile", "gpu", "config"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "zero_stage: 2" in proc.stdout and "precision: bf16" in proc.stdout and "warmup_examples: 30000" in proc.stdout


def test_gpu_profile_stages_start_on_cpu_with_tiny_models(tmp_path):
    """prepare and models, every later stage's preflight on the result, then SFT under ZeRO-2 in bf16 (DeepSpeed
    runs both on CPU: tests/train/test_engine.py) for two steps: the profile's path up to training, minus the GPU."""
    from gapo.paths import Workspace
    from gapo.preflight import PREFLIGHT

    overrides = [a for o in TINY_ON_CPU for a in ("-S", o)]
    env = {**os.environ, "GAPO_TRACKING": "off", "OMP_NUM_THREADS": "1"}

    def gapo(*stage: str):
        proc = subprocess.run([sys.executable, "-m", "gapo.cli", "--profile", "gpu", *overrides, "--workdir",
                               str(tmp_path), *stage], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"gapo {' '.join(stage)}: {proc.stderr[-3000:]}"
        return proc

    gapo("prepare")
    gapo("models")
    params, ws = load_params(None, TINY_ON_CPU, profile="gpu"), Workspace(tmp_path)
    assert (params.deepspeed.zero_stage, params.models.dtype) == (2, "bfloat16")
    for stage in ("sft", "rm_warmup"):
        PREFLIGHT[stage](params, ws)
    gapo("sft")
    cfg = json.loads((ws.sft / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert list(ws.sft.glob("*.safetensors")) and not list(ws.sft.glob("*.bin"))


def test_runtime_device_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    # The engines place models by torch.cuda.is_available(), so an explicit `cuda` on a machine without one would
    # quietly train on the CPU; it must stop with a one-line config error instead (auto still falls back).
    import pytest
    import torch

    from gapo import runtime
    from gapo.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="runtime.device=cuda"):
        runtime.device(load_params(None, ["runtime.device=cuda"]))
    assert runtime.device(load_params(None, ["runtime.device=auto"])).type == "cpu"
    assert load_params(None, [], "gpu").runtime.device == "cuda"  # the gpu profile refuses to fall back to CPU
