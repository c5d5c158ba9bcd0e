"""infra/sizing.py: parameter counts, ZeRO sharding and activation arithmetic against values computed by hand."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "infra" / "sizing.py"
_spec = importlib.util.spec_from_file_location("gapo_infra_sizing", _PATH)
sizing = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sizing  # dataclasses look their module up there
_spec.loader.exec_module(sizing)

GB = 10 ** 9


def test_qwen25_1_5b_param_count_by_hand():
    # embeddings 151936 x 1536 (tied with the LM head)
    embed = 151936 * 1536
    assert embed == 233_373_696
    # one layer: q (1536x1536 + b), k and v (1536x256 + b; 2 kv heads x 128), o (1536x1536), SwiGLU 3 x 1536 x 8960,
    # two RMSNorm weights
    layer = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    assert layer == 46_797_824
    assert sizing.decoder_layer_params(sizing.QWEN25_1_5B) == layer
    total = embed + 28 * layer + 1536
    assert total == 1_543_714_304                      # model card: 1.54B, 1.31B non-embedding
    assert sizing.decoder_params(sizing.QWEN25_1_5B) == total
    assert total - embed == 1_310_340_608


def test_qwen25_7b_param_count_untied_head():
    p = sizing.decoder_params(sizing.QWEN25_7B)
    assert p == 7_615_616_512                          # model card: 7.61B, 6.53B non-embedding
    assert p - 2 * 152064 * 3584 == 6_525_621_760
    # the critic drops the untied LM head and adds a 3584 -> 1 value head
    assert sizing.decoder_params(sizing.QWEN25_7B, "value") == p - 152064 * 3584 + 3584 + 1


def test_longformer_param_counts():
    # allenai/longformer-base-4096 as LongformerModel (with pooler): 148,659,456 parameters
    assert sizing.encoder_params(sizing.LONGFORMER_BASE, "pooler") == 148_659_456
    # the RM swaps the pooler (768x768 + b) for a classification head: dense 768x768 + b, out_proj 768x1 + b
    assert sizing.encoder_params(sizing.LONGFORMER_BASE, "score") == 148_659_456 + 769
    assert round(sizing.encoder_params(sizing.LONGFORMER_LARGE) / 1e6) == 435  # "435M"


def test_zero_stage_bytes_per_param_single_gpu_is_16():
    for stage in range(4):
        s = sizing.model_state_bytes(GB, stage, 1)
        assert s["gpu"]["total"] == 16 * GB            # 2 weights + 2 grads + 12 Adam/master, nothing sharded


@pytest.mark.parametrize("n", [2, 4, 8, 64])
def test_zero_sharding_divides_by_gpu_count(n):
    s1 = sizing.model_state_bytes(GB, 1, n)["gpu"]
    s2 = sizing.model_state_bytes(GB, 2, n)["gpu"]
    s3 = sizing.model_state_bytes(GB, 3, n, layer_params=0)["gpu"]
    assert s1["total"] == pytest.approx(2 * GB + 2 * GB + 12 * GB / n)
    assert s2["total"] == pytest.approx(2 * GB + 14 * GB / n)
    assert s3["total"] == pytest.approx(16 * GB / n)   # ZeRO-3: everything divided by the GPU count
    assert s3["weights"] == pytest.approx(2 * GB / n)


def test_zero3_adds_two_gathered_layers():
    s = sizing.model_state_bytes(GB, 3, 8, layer_params=10 ** 6)["gpu"]
    assert s["gather"] == 2 * 10 ** 6 * 2


def test_fp32_and_frozen_models():
    assert sizing.model_state_bytes(GB, 0, 1, precision="fp32")["gpu"]["total"] == 16 * GB   # 4 + 4 + 8
    frozen = sizing.model_state_bytes(GB, 2, 8, trainable=False)["gpu"]
    assert frozen["total"] == 2 * GB                   # replicated bf16 weights, no grads, no optimizer
    assert sizing.model_state_bytes(GB, 3, 8, trainable=False)["gpu"]["weights"] == 2 * GB / 8


def test_offload_moves_optimizer_and_grads_to_cpu():
    s = sizing.model_state_bytes(GB, 2, 4, offload_optimizer=True)
    assert s["gpu"]["optim"] == 0 and s["gpu"]["grads"] == 0
    assert s["gpu"]["weights"] == 2 * GB
    assert s["cpu"]["optim"] == pytest.approx(14 * GB / 4)
    p = sizing.model_state_bytes(GB, 3, 4, offload_optimizer=True, offload_param=True)
    assert p["gpu"]["weights"] == 0 and p["cpu"]["weights"] == pytest.approx(2 * GB / 4)
    with pytest.raises(ValueError):
        sizing.model_state_bytes(GB, 2, 4, offload_param=True)


def test_activation_arithmetic():
    a = sizing.QWEN25_1_5B
    per_token_layer = 12 * 1536 + 4 * 256 + 8 * 8960
    assert per_token_layer == 91_136
    tokens = 2 * 1024
    full = sizing.decoder_activation_bytes(a, tokens, checkpointing=False, logits=False)
    ckpt = sizing.decoder_activation_bytes(a, tokens, checkpointing=True, logits=False)
    assert full == 28 * per_token_layer * tokens
    assert ckpt == 28 * 2 * 1536 * tokens + per_token_layer * tokens
    assert ckpt < full / 10
    with_logits = sizing.decoder_activation_bytes(a, tokens, checkpointing=True, logits=True)
    assert with_logits - ckpt == 10 * 151936 * tokens
    # KV cache: 2 x 28 layers x (4 kv heads x 128) x 2 bytes per token for the 7B
    assert sizing.kv_cache_bytes(sizing.QWEN25_7B, 1) == 57_344


def test_plans_fit_where_the_doc_says():
    # docs/scale-out.md recommends these on 80 GiB GPUs
    assert sizing.fits(sizing.size_plan(sizing.PLANS["qwen2.5-1.5b-zero2"], 1)["peak"], 80)
    assert sizing.fits(sizing.size_plan(sizing.PLANS["qwen2.5-7b-zero3"], 4)["peak"], 80)
    assert not sizing.fits(sizing.size_plan(sizing.PLANS["qwen2.5-7b-zero3"], 2)["peak"], 80)
    assert sizing.fits(sizing.size_plan(sizing.PLANS["qwen2.5-7b-zero2-offload"], 1)["peak"], 80)


def test_cli_prints_tables(capsys):
    assert sizing.main(["--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "| Qwen2.5-7B | LM (actor, reference) | 7,615,616,512 |" in out
    assert "peak per GPU" in out


def test_doc_table_is_the_scripts_output(capsys):
    doc = (_PATH.parents[1] / "docs" / "scale-out.md").read_text()
    start = doc.index("<!-- output of `python infra/sizing.py`")
    start = doc.index("\n\n", start) + 2
    end = doc.index("\n\n<!-- end of sizing output -->")
    assert sizing.main([]) == 0
    assert doc[start:end] == capsys.readouterr().out.rstrip(), "rerun python infra/sizing.py and paste its output"


@pytest.mark.gpu
def test_estimates_match_a_gpu_measurement():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    spec = importlib.util.spec_from_file_location("gapo_infra_sizing_gpu", _PATH.with_name("sizing_gpu_check.py"))
    check = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = check
    spec.loader.exec_module(check)
    r = check.measure("actor", sizing.QWEN25_1_5B, 4, 2048, True)
    assert r["params"] == r["params_sizing"]
    assert r["predicted_gib"] == pytest.approx(r["fwd_peak_gib"], rel=0.15)
