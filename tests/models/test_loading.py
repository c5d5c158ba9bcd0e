"""The models stage and safe loading: round trips, source pointers, and one-line refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.config import ModelsConfig
from gapo.errors import ModelError
from gapo.models import loading


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ta.tiny_workspace(tmp_path_factory.mktemp("ws"))


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_models_stage_writes_loadable_safetensors_dirs(tiny):
    ws, params = tiny
    assert (ws.policy_base / "model.safetensors").is_file() and (ws.reward_base / "model.safetensors").is_file()
    assert not list(ws.policy_base.glob("*.bin"))
    metrics = json.loads(ws.metrics_file("models").read_text())
    policy, ptok = loading.load_policy(ws.policy_base, params.models)
    rm, rtok = loading.load_reward_model(ws.reward_base, params.models)
    assert metrics["policy_vocab"] == len(ptok) and metrics["reward_vocab"] == len(rtok)
    assert metrics["policy_params"] == sum(p.numel() for p in policy.parameters())
    assert policy.config.hidden_size == params.models.policy_arch.hidden_size
    assert rm.config.num_labels == 1 and rm.config.model_type == "bert"
    assert ptok.get_vocab() != rtok.get_vocab()


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    ws, params = tiny
    policy, tok = loading.load_policy(ws.policy_base, params.models)
    x = torch.tensor([tok("Requirements: a mug")["input_ids"]])
    with torch.no_grad():
        ref = policy(input_ids=x).logits
    out = loading.save_pretrained(policy, tok, tmp_path / "copy", extra_json={"note.json": {"a": 1}})
    again, tok2 = loading.load_policy(out, params.models)
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, ref)
    assert json.loads((out / "note.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".copy.*"))  # atomic: no temp dirs left behind


def test_models_stage_is_reproducible(tiny, tmp_path):
    """Same params + same data -> byte-identical weights (tokenizer training and init are seeded)."""
    from gapo.models.materialize import run_models
    from gapo.paths import Workspace

    ws, params = tiny
    ws2 = Workspace(tmp_path)
    shutil.copytree(ws.data, ws2.data)
    run_models(params, ws2)
    for role in ("policy", "reward"):
        a = (ws.models / role / "model.safetensors").read_bytes()
        b = (ws2.models / role / "model.safetensors").read_bytes()
        assert a == b, role


def test_user_model_gets_a_source_pointer(tiny, tmp_path):
    from gapo.models.materialize import run_models
    from gapo.paths import Workspace

    ws, _ = tiny
    params = ta.tiny_params(f"models.policy={ws.policy_base}", f"models.reward={ws.reward_base}")
    ws2 = Workspace(tmp_path)
    run_models(params, ws2)
    ptr = json.loads((ws2.policy_base / "source.json").read_text())
    assert ptr["source"] == str(ws.policy_base.resolve()) and not (ws2.policy_base / "model.safetensors").exists()
    model, _ = loading.load_policy(ws2.policy_base, params.models)  # follows the pointer
    assert model.config.model_type == "llama"


def test_reward_autocast_keeps_fp32_weights_and_logits(tiny):
    ws, params = tiny
    plain, tok = loading.load_reward_model(ws.reward_base, params.models.model_copy(update={"reward_autocast": "none"}))
    cast, _ = loading.load_reward_model(ws.reward_base, params.models.model_copy(update={"reward_autocast": "bfloat16"}))
    assert "forward" not in vars(plain)  # "none" leaves the module untouched
    enc = tok(["Requirements: a mug"], ["A blue mug."], return_tensors="pt")
    with torch.no_grad():
        a, b = plain(**enc).logits, cast(**enc).logits
    assert b.dtype == torch.float32 and all(p.dtype == torch.float32 for p in cast.parameters())
    assert not torch.equal(a, b)  # the matmuls really ran in bf16 ...
    assert torch.allclose(a, b, atol=0.05)  # ... and agree to bf16 precision
    cast.train()
    cast(**enc).logits.sum().backward()  # gradients reach the fp32 weights
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in cast.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cast.parameters())


def test_autocast_context_modes():
    cfg = ModelsConfig()
    with loading.autocast_context("cpu", "bfloat16", cfg):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    for mode, c in (("none", cfg), ("bfloat16", ModelsConfig(dtype="bfloat16"))):
        with loading.autocast_context("cpu", mode, c):
            assert not torch.is_autocast_enabled("cpu")
    with loading.autocast_context("cpu", "auto", cfg):  # on only where bf16 is native
        assert torch.is_autocast_enabled("cpu") == loading.native_bf16("cpu")


def test_missing_path(tmp_path):
    with pytest.raises(ModelError) as e:
        loading.load_policy(tmp_path / "nope")
    assert "no such directory" in _one_line(e)


def test_uncached_hub_id():
    with pytest.raises(ModelError) as e:
        loading.load_reward_model("someone/not-a-cached-model")
    assert "local cache" in _one_line(e)


def test_not_a_model_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError) as e:
        loading.load_policy(tmp_path)
    assert "not a model directory" in _one_line(e)


def test_pickle_only_checkpoint_refused_unless_allowed(tiny, tmp_path):
    ws, params = tiny
    model, tok = loading.load_reward_model(ws.reward_base, params.models)
    d = tmp_path / "pickled"
    d.mkdir()
    model.config.save_pretrained(d)
    tok.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelError) as e:
        loading.load_reward_model(d, ModelsConfig())
    assert "pickle-only" in _one_line(e) and "allow_pickle" in str(e.value)
    allowed, _ = loading.load_reward_model(d, ModelsConfig(allow_pickle=True))
    assert torch.equal(allowed.classifier.weight, model.classifier.weight)


def test_decoder_as_reward_model_and_encoder_as_policy_refused(tiny):
    ws, params = tiny
    with pytest.raises(ModelError) as e:
        loading.load_reward_model(ws.policy_base, params.models)
    assert "decoder-only" in _one_line(e) and "encoder" in str(e.value)
    with pytest.raises(ModelError) as e:
        loading.load_policy(ws.reward_base, params.models)
    assert "causal LM" in _one_line(e)


def test_models_stage_refuses_decoder_reward_from_cli(tiny, tmp_path, capsys, monkeypatch):
    from gapo import cli

    ws, _ = tiny
    shutil.copytree(ws.data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the CLI may open a tracking store in the working directory
    rc = cli.main(["--profile", "tiny", "--workdir", str(tmp_path), "models", "-S", f"models.reward={ws.policy_base}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1
    assert errors[0].startswith("error: reward") and "decoder-only" in errors[0]


def test_unknown_builtin(tmp_path):
    from gapo.models.materialize import materialize_policy, materialize_reward
    from gapo.paths import Workspace

    with pytest.raises(ModelError, match="unknown builtin"):
        materialize_reward(ta.tiny_params("models.reward=builtin:nope"), Workspace(tmp_path))
    with pytest.raises(ModelError, match="unknown builtin"):
        materialize_policy(ta.tiny_params("models.policy=builtin:gpt-5"), Workspace(tmp_path))
    with pytest.raises(ModelError, match="gapo models"):
        loading.load_policy("builtin:llama-tiny")


def test_builtin_minilm_gets_a_seeded_one_logit_head(tmp_path):
    from gapo.models.materialize import materialize_reward
    from gapo.paths import Workspace

    params = ta.tiny_params("models.reward=builtin:minilm")
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    out = materialize_reward(params, a)
    materialize_reward(params, b)
    assert out["kind"] == "copied" and out["vocab"] == 30522
    rm, tok = loading.load_reward_model(a.reward_base, params.models)
    assert rm.config.num_labels == 1 and rm.classifier.out_features == 1
    assert (a.reward_base / "model.safetensors").read_bytes() == (b.reward_base / "model.safetensors").read_bytes()
    src = json.loads((a.reward_base / "gapo_source.json").read_text())
    assert src["source"] == "builtin:minilm" and len(src["weights_sha256"]) == 64


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_uses_its_chat_template(tmp_path):
    """GGUF -> fp32 safetensors in models.cache_dir (outside the workspace), models/policy points at it."""
    from gapo.models.materialize import materialize_policy
    from gapo.models.prompting import decode_response, encode_prompt, format_prompt, stop_token_ids
    from gapo.paths import Workspace
    from gapo.train.sampler import sample

    params = ta.tiny_params("models.policy=builtin:smollm2", f"models.cache_dir={tmp_path / 'cache'}")
    ws = Workspace(tmp_path / "ws")
    out = materialize_policy(params, ws)
    assert out["kind"] == "pointer" and Path(out["path"]).is_relative_to(tmp_path / "cache")
    assert not (ws.policy_base / "model.safetensors").exists()
    model, tok = loading.load_policy(ws.policy_base, params.models)
    assert model.config.model_type == "llama" and tok.eos_token == "<|im_end|>"
    assert format_prompt("Describe a mug.", tok).endswith("<|im_start|>assistant\n")
    ids = encode_prompt("Describe a mug in one sentence.", tok)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant: no doubled BOS
    res = sample(model, [ids], 24, stop_token_ids(tok), tok.pad_token_id, greedy=True)
    text = decode_response(res.response_ids[0].tolist(), tok)
    assert "mug" in text.lower()
    # A second materialisation reuses the conversion (no new files, same pointer).
    before = sorted(p.stat().st_mtime for p in (tmp_path / "cache").rglob("*.safetensors"))
    materialize_policy(params, ws)
    assert sorted(p.stat().st_mtime for p in (tmp_path / "cache").rglob("*.safetensors")) == before
