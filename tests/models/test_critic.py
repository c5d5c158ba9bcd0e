"""Critic: per-token values over policy ids, for both initialisations; the encoder critic must be causal."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.models.critic import Critic, TokenBridge, build_critic, load_critic
from gapo.models.loading import load_tokenizer
from gapo.models.prompting import encode_prompt
from gapo.train.engine import save_critic
from gapo.train.sampler import left_pad


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ws, params = ta.tiny_workspace(tmp_path_factory.mktemp("ws"))
    return ws, params, load_tokenizer(ws.policy_base, params.models)


def _batch(tok, n=3, response_len=12, seed=0):
    from gapo.io import read_jsonl

    g = torch.Generator().manual_seed(seed)
    rows = read_jsonl(Path(tok.name_or_path).parent.parent / "data" / "sft" / "train.jsonl")[:n]
    seqs = []
    for i, r in enumerate(rows):
        p = encode_prompt(r["prompt"], tok)[-(20 + 5 * i):]  # different lengths -> real left padding
        seqs.append(p + torch.randint(2, len(tok), (response_len,), generator=g).tolist())
    return seqs


def _critic(params, ws, tok, init):
    params = ta.tiny_params(f"models.critic_init={init}")
    return build_critic(params, ws.policy_base, ws.reward_base, tok).eval(), params


@pytest.mark.parametrize("init", ["policy", "reward"])
def test_values_ignore_left_padding(tiny, init):
    ws, _, tok = tiny
    critic, _ = _critic(None, ws, tok, init)
    seqs = _batch(tok)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        batched = critic(ids, mask)
        assert batched.shape == ids.shape and batched.dtype == torch.float32
        for b, s in enumerate(seqs):
            alone = critic(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
            torch.testing.assert_close(batched[b, mask[b].bool()], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("init", ["policy", "reward"])
def test_values_never_see_the_future(tiny, init):
    """V(s_t) may depend only on tokens <= t: rewrite everything after t and the values up to t must not move."""
    ws, _, tok = tiny
    critic, _ = _critic(None, ws, tok, init)
    seq = _batch(tok, n=1, response_len=30)[0]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        base = critic(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))[0]
        assert base.unique().numel() > 3  # values do change along the sequence
        for t in range(len(seq) - 30, len(seq) - 1, 4):
            other = seq[: t + 1] + torch.randint(2, len(tok), (len(seq) - t - 1,), generator=g).tolist()
            vals = critic(torch.tensor([other]), torch.ones(1, len(other), dtype=torch.long))[0]
            torch.testing.assert_close(vals[: t + 1], base[: t + 1], atol=1e-5, rtol=1e-5)


def test_bridge_maps_only_complete_words(tiny):
    ws, params, tok = tiny
    etok = load_tokenizer(ws.reward_base, params.models, "reward")
    bridge = TokenBridge(tok, etok, 64)
    ids = tok("mug is warm", add_special_tokens=False)["input_ids"]
    enc_ids, _, index = bridge(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    words = etok.convert_ids_to_tokens(enc_ids[0].tolist())
    mapped = [words[j] for j in index[0].tolist()]
    prefix_text = [tok.decode(ids[: k + 1]) for k in range(len(ids))]
    for text, w in zip(prefix_text, mapped):
        complete = text.rsplit(" ", 1)[0] if " " in text else ""
        assert w == (etok.tokenize(complete)[-1] if complete else "[CLS]"), (text, w)


@pytest.mark.parametrize("init", ["policy", "reward"])
def test_save_load_round_trip_and_training_step(tiny, tmp_path, init):
    from gapo.train.engine import build_train_engine

    ws, _, tok = tiny
    critic, params = _critic(None, ws, tok, init)
    seqs = _batch(tok)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    from gapo.config import OptimConfig

    optim = OptimConfig(learning_rate=3e-4, warmup_ratio=0.0, micro_batch_size=len(seqs))
    engine = build_train_engine(critic, params, optim, num_training_steps=8)
    target = torch.linspace(-1, 1, ids.size(1)).expand_as(ids)
    losses = []
    for _ in range(8):
        v = engine(ids, mask)
        loss = ((v - target) ** 2 * mask).sum() / mask.sum()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    out = save_critic(engine, tmp_path / "critic")
    again = load_critic(out, params, tok).eval()
    critic.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), critic(ids, mask))
    assert again.init == init and isinstance(again, Critic)
