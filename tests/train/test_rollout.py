"""gapo.train.rollout: sample-and-decode and the one definition of "this row stopped"."""
from __future__ import annotations

import pytest
import torch

from gapo.train.rollout import Generations, Sampling, sample_and_decode
from gapo.train.sampler import Samples
from tests.models import tiny_assets as ta


def generations(responses: list[list[int]], lengths: list[int], stops=(2,)) -> Generations:
    prompt = [[7, 8]] * len(responses)
    seq = torch.tensor([p + r for p, r in zip(prompt, responses)])
    mask = torch.tensor([[1] * n + [0] * (len(r) - n) for r, n in zip(responses, lengths)], dtype=torch.bool)
    attn = torch.cat([torch.ones((len(responses), 2), dtype=torch.long), mask.long()], dim=1)
    return Generations(Samples(seq, attn, mask, prompt_len=2), texts=[""] * len(responses), stop_ids=frozenset(stops))


def test_stopped_is_a_stop_id_as_the_last_counted_token():
    g = generations([[5, 2, 0], [5, 6, 7], [2, 0, 0]], [2, 3, 1])
    assert g.lengths == [2, 3, 1] and g.stopped == [True, False, True]


def test_stopped_when_the_pad_id_is_a_stop_id():
    # pad = EOS (a tokenizer without a pad token): the padding after a stop must not make a full row "stopped"
    g = generations([[5, 2, 2], [5, 6, 7], [5, 6, 2]], [2, 3, 3])
    assert g.stopped == [True, False, True]


def test_stopped_of_an_empty_response_is_false():
    assert generations([[0, 0]], [0]).stopped == [False]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from gapo.io import read_jsonl
    from gapo.models.loading import load_policy
    from gapo.models.prompting import encode_prompt

    ws, params = ta.tiny_workspace(tmp_path_factory.mktemp("ws"))
    model, tok = load_policy(ws.policy_base, params.models)
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:4]
    return model, tok, [encode_prompt(r["prompt"], tok)[-(10 + 5 * i):] for i, r in enumerate(rows)]


def test_sample_and_decode_is_the_sampler_plus_decoding(policy, monkeypatch):
    """Same draws as the bare sampler with the same seed; texts and `stopped` as each former caller computed them
    (PPO from the sequences, health from any stop id in the row, evaluate from the trimmed ids)."""
    from gapo.models.prompting import decode_response, pad_token_id, stop_token_ids
    from gapo.train.sampler import sample

    model, tok, prompts = policy
    stops, pad = stop_token_ids(tok), pad_token_id(tok)
    knobs = dict(temperature=0.9, top_k=20)
    # The untrained tiny policy rarely emits EOS: a token of row 0 that row 1 never samples becomes a stop id too,
    # so stopped and unstopped rows both occur (a row's tokens up to its first stop do not depend on the stop set).
    probe = sample(model, prompts, 16, stops, pad, generator=torch.Generator().manual_seed(5), **knobs)
    rows = probe.response_ids.tolist()
    extra = min(set(rows[0][1:]) - set(rows[1]) - {pad})
    tok_stops = [*stops, extra]
    monkeypatch.setattr("gapo.models.prompting.stop_token_ids", lambda t: tok_stops)
    g = sample_and_decode(model, prompts, tok, Sampling(16, **knobs), generator=torch.Generator().manual_seed(5))
    s = sample(model, prompts, 16, tok_stops, pad, generator=torch.Generator().manual_seed(5), **knobs)
    assert torch.equal(g.samples.sequences, s.sequences) and torch.equal(g.samples.action_mask, s.action_mask)
    assert g.texts == [decode_response(ids, tok, tok_stops) for ids in s.response_ids.tolist()]
    lengths = s.action_mask.sum(dim=1).long().tolist()
    from_sequences = [n > 0 and int(s.sequences[i, s.prompt_len + n - 1]) in tok_stops for i, n in enumerate(lengths)]
    from_any_id = [any(t in tok_stops for t in row) for row in s.response_ids.tolist()]
    from_trimmed = [bool(r) and r[-1] in tok_stops for r in (s.response_ids[i, :n].tolist()
                                                              for i, n in enumerate(lengths))]
    assert g.lengths == lengths and g.stopped == from_sequences == from_any_id == from_trimmed
    assert g.stopped[0] and not g.stopped[1]
