"""The reward-model kinds (gapo.models.reward_model): which checkpoints each takes, the one batching function, the
score each reads and the loss each trains with."""
from __future__ import annotations

import math

import pytest
import torch

from tests.orchestration import tiny_models

from gapo.config import ModelsConfig
from gapo.errors import ModelError
from gapo.models import reward_model as RM
from gapo.models.loading import load_reward_model

REQ = "Requirements:\n- Include keywords lamp in the response."
PAIRS = [{"prompt_chosen": "Write.\n" + REQ, "chosen": "a lamp", "prompt_rejected": "Write.\n" + REQ,
          "rejected": "a mug"},
         {"prompt_chosen": REQ, "chosen": "soft cotton lamp", "prompt_rejected": REQ + "\n- No commas.",
          "rejected": "soft cotton lamp"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_kinds")
    return tiny_models.build_reward(root / "bert"), tiny_models.build_policy(root / "llama")


def test_each_checkpoint_loads_as_its_kind_and_is_refused_as_the_other(models):
    bert, llama = models
    enc, enc_tok = load_reward_model(bert, ModelsConfig())
    dec, dec_tok = load_reward_model(llama, ModelsConfig(), "decoder reward model", kind="decoder")
    assert RM.kind_of(enc) is RM.ENCODER and RM.kind_of(dec) is RM.DECODER
    assert RM.kind_of(enc.config) is RM.ENCODER
    assert dec.config.pad_token_id == dec_tok.pad_token_id  # the head pools the last token that is not this id
    with pytest.raises(ModelError, match=r"^reward '.*llama': is a decoder-only model \(llama\); the reward model "
                                         r"must be an encoder"):
        load_reward_model(llama, ModelsConfig())
    with pytest.raises(ModelError, match=r"^decoder reward model '.*bert': is an encoder \(bert\)"):
        load_reward_model(bert, ModelsConfig(), "decoder reward model", kind="decoder")


def test_collate_pads_right_and_keeps_segment_ids_only_where_the_tokenizer_has_them(models):
    bert, llama = models
    _, enc_tok = load_reward_model(bert, ModelsConfig())
    _, dec_tok = load_reward_model(llama, ModelsConfig(), "decoder reward model", kind="decoder")
    rows = [{"prompt": REQ, "response": "ok", "label": 1}, {"prompt": "Facts here.\n" + REQ, "response": "a lamp"}]
    batch = RM.collate(RM.encode_rows(enc_tok, rows, 64), enc_tok)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    n0 = int(batch["attention_mask"][0].sum())
    assert n0 < batch["input_ids"].shape[1] and (batch["input_ids"][0, n0:] == enc_tok.pad_token_id).all()
    assert batch["token_type_ids"][0, n0 - 1] == 1  # the response's segment
    assert batch["labels"].tolist() == [1.0, 0.0]  # a row without a label (scoring) is 0
    assert "token_type_ids" not in RM.collate(RM.encode_rows(dec_tok, rows, 64), dec_tok)


def test_facts_false_encodes_the_requirements_alone(models):
    _, tok = load_reward_model(models[0], ModelsConfig())
    rows = [{"prompt": "Product: lamp\nColour: red\n" + REQ, "response": "a lamp"}, {"prompt": REQ, "response": "a lamp"}]
    batch = RM.collate(RM.encode_rows(tok, rows, 64, facts=False), tok)
    assert batch["input_ids"][0].tolist() == batch["input_ids"][1].tolist()


def test_decoder_encodes_chosen_then_rejected_and_trains_bradley_terry(models):
    model, tok = load_reward_model(models[1], ModelsConfig(), "decoder reward model", kind="decoder")
    enc = RM.DECODER.encode(tok, PAIRS, 64)
    assert [e[2] for e in enc] == [1.0, 1.0, 0.0, 0.0]
    assert enc[0][0] == RM.encode_rows(tok, [{"prompt": PAIRS[0]["prompt_chosen"], "response": "a lamp"}], 64)[0][0]
    batch = RM.collate(enc, tok)
    scores = RM.DECODER.score(model, batch)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    chosen, rejected = RM.DECODER.chosen_rejected(scores)
    expected = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    torch.testing.assert_close(RM.DECODER.loss(scores, batch), expected)


def test_encoder_reads_the_first_logit_and_trains_bce(models):
    model, tok = load_reward_model(models[0], ModelsConfig())
    batch = RM.collate(RM.ENCODER.encode(tok, [{"prompt": REQ, "response": "a lamp", "label": 1},
                                               {"prompt": REQ, "response": "a mug", "label": 0}], 64), tok)
    scores = RM.ENCODER.score(model, batch)
    with torch.no_grad():
        direct = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits[:, 0]
    torch.testing.assert_close(scores.detach(), direct)
    fixed = torch.tensor([0.0, math.log(3)])  # ln 2 and ln 4: mean 1.5 ln 2
    torch.testing.assert_close(RM.ENCODER.loss(fixed, batch), torch.tensor(1.5 * math.log(2)))


def test_encoder_prepare_stores_the_layout_and_freezes(models):
    from gapo.config import RewardConfig

    model, _ = load_reward_model(models[0], ModelsConfig())
    assert RM.keeps_facts(model)  # absent = keep (every checkpoint made before the knob)
    total = sum(p.numel() for p in model.parameters())
    RM.ENCODER.prepare(model, RewardConfig(prompt_facts="drop", freeze_layers=1))
    assert not RM.keeps_facts(model)
    assert 0 < sum(p.numel() for p in model.parameters() if p.requires_grad) < total
