"""The KV-cached sampler: parity with HF generate (greedy), with the uncached reference, and its masks."""
from __future__ import annotations


import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.models.loading import load_policy
from gapo.models.prompting import encode_prompt
from gapo.models.prompting import position_ids_from_mask
from gapo.train.sampler import (left_pad, logits_to_next_token, sample,
                                sample_naive)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The tiny policy after a few SFT-like steps, so greedy paths are not degenerate repeats."""
    from gapo.io import read_jsonl
    from gapo.models.prompting import encode_sft_example

    ws, params = ta.tiny_workspace(tmp_path_factory.mktemp("ws"))
    model, tok = load_policy(ws.policy_base, params.models)
    from gapo.train.sft import collate_sft

    rows = read_jsonl(ws.jsonl("sft", "train"))[:128]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    examples = [encode_sft_example(r["prompt"], r["completion"], tok, 256) for r in rows]
    for step in range(30):
        b = collate_sft([examples[(step * 16 + j) % len(examples)] for j in range(16)], tok.pad_token_id)
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    prompts = [encode_prompt(r["prompt"], tok)[-(12 + 7 * i):] for i, r in enumerate(rows[:4])]
    return model, tok, prompts


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [1, 1, 0]]
    with pytest.raises(ValueError):
        left_pad([[1], []], 0)


def test_greedy_equals_hf_generate(lm):
    model, tok, prompts = lm
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ours = sample(model, prompts, 24, eos, pad, greedy=True)
    ids, mask = left_pad(prompts, pad)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=24,
                            eos_token_id=eos, pad_token_id=pad)
    hf_resp = hf[:, ids.size(1):]
    n = hf_resp.size(1)
    assert n >= 1 and torch.equal(ours.response_ids[:, :n], hf_resp)
    assert (ours.response_ids[:, n:] == pad).all()  # we stop where HF stops


def test_cached_equals_uncached_greedy_and_sampled(lm):
    model, tok, prompts = lm
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a = sample(model, prompts, 20, eos, pad, greedy=True)
    b = sample_naive(model, prompts, 20, eos, pad, greedy=True)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.action_mask, b.action_mask)
    kw = dict(temperature=0.9, top_p=0.9, top_k=50)
    a = sample(model, prompts, 20, eos, pad, generator=torch.Generator().manual_seed(7), **kw)
    b = sample_naive(model, prompts, 20, eos, pad, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a.sequences, b.sequences)


def test_rows_stop_at_eos_with_consistent_masks(lm):
    model, tok, prompts = lm
    pad = tok.pad_token_id
    free = sample(model, prompts, 16, tok.eos_token_id, pad, greedy=True).response_ids.tolist()
    # Make a token that some row r emits for the first time at step k >= 1 the "EOS".
    r, k = next((r, k) for r in range(len(free)) for k in range(1, 16) if free[r][k] not in free[r][:k])
    stop = free[r][k]
    out = sample(model, prompts, 16, [tok.eos_token_id, stop], pad, greedy=True)
    assert out.response_ids[r, : k + 1].tolist() == free[r][: k + 1]
    am = out.action_mask[r]
    assert am[: k + 1].all() and not am[k + 1:].any()  # EOS counts as an action, nothing after it
    assert (out.response_ids[r, k + 1:] == pad).all()
    P = out.prompt_len
    assert torch.equal(out.attention_mask[:, P:].bool(), out.action_mask)
    assert torch.equal(out.attention_mask[:, :P], left_pad(prompts, pad)[1])
    assert out.response_lengths[r] == k + 1
    # The batch ends when the last row stops (or at max_new_tokens); a row that never stopped is all actions.
    stopped = torch.isin(out.response_ids, torch.tensor([tok.eos_token_id, stop])) & out.action_mask
    assert out.action_mask.size(1) == 16 or stopped.any(dim=1).all()
    for i in range(len(prompts)):
        if not stopped[i].any():
            assert out.action_mask[i].all()


def test_top_k_one_and_tiny_top_p_are_greedy(lm):
    model, tok, prompts = lm
    g = sample(model, prompts, 12, tok.eos_token_id, tok.pad_token_id, greedy=True)
    k1 = sample(model, prompts, 12, tok.eos_token_id, tok.pad_token_id, top_k=1, temperature=1.5,
                generator=torch.Generator().manual_seed(0))
    p0 = sample(model, prompts, 12, tok.eos_token_id, tok.pad_token_id, top_p=1e-6,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.sequences, k1.sequences) and torch.equal(g.sequences, p0.sequences)


def test_filters_respect_their_support():
    torch.manual_seed(0)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    k2 = logits_to_next_token(logits, top_k=2, generator=g)
    assert set(k2.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)
    # top_p=0.8: the smallest prefix of the sorted distribution whose mass reaches 0.8
    need = int((probs.cumsum(-1) < 0.8).sum()) + 1
    p = logits_to_next_token(logits, top_p=0.8, generator=g)
    assert set(p.tolist()) == set(range(need))
    # Plain sampling follows the softmax: the frequency of token 0 is within 4 sigma of its probability.
    s = logits_to_next_token(logits, generator=g)
    freq = (s == 0).float().mean().item()
    sigma = (probs[0] * (1 - probs[0]) / 2000) ** 0.5
    assert abs(freq - probs[0].item()) < 4 * sigma


def test_static_cache_path_equals_generic_path_and_hf(lm):
    """The static-KV-cache decoder (default for Llama) gives the same tokens as HF's forward + DynamicCache, greedy
    and sampled with one seed, and is actually taken for this model."""
    import gapo.train.sampler as S

    model, tok, prompts = lm
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert S._StaticLlamaDecoder.supports(model)
    outs = {}
    for flag in (True, False):
        S.STATIC_CACHE = flag
        try:
            outs[flag] = (sample(model, prompts, 20, eos, pad, greedy=True),
                          sample(model, prompts, 20, eos, pad, temperature=0.8, top_k=40,
                                 generator=torch.Generator().manual_seed(3)))
        finally:
            S.STATIC_CACHE = True
    for a, b in zip(outs[True], outs[False]):
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.action_mask, b.action_mask)


def test_static_cache_handles_grouped_query_attention():
    """GQA (fewer K/V heads than query heads, as in SmolLM2) through the static path equals HF generate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import gapo.train.sampler as S

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=10000.0, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    assert S._StaticLlamaDecoder.supports(model)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    ours = sample(model, prompts, 12, [10**6], 0, greedy=True)
    ids, mask = left_pad(prompts, 0)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                            eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.response_ids, hf[:, ids.size(1):])


def test_inverse_cdf_draw_never_picks_zero_mass_and_matches_frequencies():
    from gapo.train.sampler import _sample_categorical

    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    x = _sample_categorical(probs, g)
    assert set(x.tolist()) <= {1, 3, 4}
    freq = torch.bincount(x, minlength=6).float() / len(x)
    sigma = (probs[0] * (1 - probs[0]) / len(x)).sqrt()
    assert ((freq - probs[0]).abs() <= 4 * sigma + 1e-9).all()
    # Unnormalised rows (any non-negative weights) work as torch.multinomial's do.
    assert set(_sample_categorical(torch.tensor([[0.0, 0.0, 7.0]]), g).tolist()) == {2}
