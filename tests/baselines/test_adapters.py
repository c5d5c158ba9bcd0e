"""PP/PR -> method data adapters, the per-side-prompt tokenisation and DPO collator, the paradigm view of data/rm."""
from __future__ import annotations


import pytest

from tests.orchestration.tiny_models import build_policy

from gapo.config import ConfigError, load_params
from gapo.errors import DataError
from gapo.data import preferences as P
from gapo.train import baselines as B

PP = {"key": 7, "chosen_prompt": "Facts\nRequirements:\nUse the word blue.", "response": "A blue mug.",
      "rejected_prompt": "Facts\nRequirements:\nUse the word red.", "chosen_instruction_id_list": ["keywords:existence"],
      "chosen_kwargs": [{"keywords": ["blue"]}], "perturbation": "modify"}
PR = {"key": 9, "prompt": "Facts\nRequirements:\nAnswer in lowercase.", "chosen": "a mug.", "rejected": "A Mug.",
      "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}


def test_pp_pairs_keep_the_response_and_vary_the_prompt():
    (p,) = P.preference_pairs([PP], "pp")
    assert p["prompt_chosen"] == PP["chosen_prompt"] and p["prompt_rejected"] == PP["rejected_prompt"]
    assert p["chosen"] == p["rejected"] == PP["response"]
    assert p["key"] == 7 and p["instruction_id_list"] == ["keywords:existence"]


def test_pr_pairs_share_the_prompt():
    (p,) = P.preference_pairs([PR], "pr")
    assert p["prompt_chosen"] == p["prompt_rejected"] == PR["prompt"]
    assert (p["chosen"], p["rejected"]) == ("a mug.", "A Mug.")


def test_bad_rows_and_paradigm_are_one_line_errors():
    with pytest.raises(DataError, match="preferential-prompt row 1: missing field 'rejected_prompt'"):
        P.preference_pairs([{k: v for k, v in PP.items() if k != "rejected_prompt"}], "pp")
    with pytest.raises(ConfigError, match="paradigm 'xx'"):
        P.preference_pairs([PR], "xx")


def test_kto_and_rm_views_label_each_side():
    pairs = P.preference_pairs([PP], "pp") + P.preference_pairs([PR], "pr")
    kto = P.unpaired_rows(pairs)
    assert [(r["prompt"], r["completion"], r["label"]) for r in kto[:2]] == [
        (PP["chosen_prompt"], PP["response"], True), (PP["rejected_prompt"], PP["response"], False)]
    assert [(r["completion"], r["label"]) for r in kto[2:]] == [("a mug.", True), ("A Mug.", False)]
    rm = P.rm_rows(pairs)
    assert [r["label"] for r in rm] == [1, 0, 1, 0] and rm[3]["response"] == "A Mug." and rm[2]["key"] == 9


def test_sample_pairs_is_seeded_and_bounded():
    pairs = [{"key": i} for i in range(50)]
    a, b = P.sample_pairs(pairs, 10, 3), P.sample_pairs(pairs, 10, 3)
    assert a == b and len(a) == 10 and a != P.sample_pairs(pairs, 10, 4)
    assert P.sample_pairs(pairs, 0, 3) == pairs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_policy(tmp_path_factory.mktemp("pol")))


def test_encode_pair_uses_the_sft_convention_per_side(tok):
    from gapo.models.prompting import encode_prompt, encode_response

    (p,) = P.preference_pairs([PP], "pp")
    enc = B.encode_pair(p, tok, 256)
    assert enc["prompt_ids"] == encode_prompt(PP["chosen_prompt"], tok)
    assert enc["rejected_prompt_ids"] == encode_prompt(PP["rejected_prompt"], tok)
    assert enc["prompt_ids"] != enc["rejected_prompt_ids"]
    assert enc["chosen_ids"] == enc["rejected_ids"] == encode_response(PP["response"], tok)  # ends with EOS
    assert enc["chosen_ids"][-1] == tok.eos_token_id


def test_per_side_collator_masks_only_responses(tok):
    (p,) = P.preference_pairs([PP], "pp")
    enc = B.encode_pair(p, tok, 256)
    batch = B._per_side_collator(tok.pad_token_id)([enc])
    ids, comp, attn = batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
    assert ids.shape[0] == 2  # chosen rows first, then rejected rows (DPOTrainer's layout)
    for row, prompt in ((0, enc["prompt_ids"]), (1, enc["rejected_prompt_ids"])):
        n = len(prompt) + len(enc["chosen_ids"])
        assert ids[row, :len(prompt)].tolist() == prompt
        assert comp[row].tolist() == [0] * len(prompt) + [1] * len(enc["chosen_ids"]) + [0] * (ids.shape[1] - n)
        assert int(attn[row].sum()) == n


def test_is_baseline_dispatch():
    def p(*o):
        return load_params(None, list(o))

    assert not B.is_baseline(p("method=gapo"))
    assert B.is_baseline(p("method=ppo")) and not B.is_baseline(p("method=ppo", "baselines.ppo_reward=encoder"))
    assert all(B.is_baseline(p(f"method={m}")) for m in ("sft", "dpo", "kto", "orpo", "simpo"))


def test_paradigm_workspace_maps_rm_to_the_pr_view(tmp_path):
    from gapo.io import read_jsonl, write_jsonl
    from gapo.paths import Workspace

    ws = Workspace(tmp_path)
    write_jsonl(ws.jsonl("pr", "train"), [PR])
    assert B.paradigm_workspace(load_params(None, ["paradigm=pp"]), ws) is ws
    view = B.paradigm_workspace(load_params(None, ["paradigm=pr"]), ws)
    assert view.rm_data == "rm_pr" and view.jsonl("rm", "train") == tmp_path / "data" / "rm_pr" / "train.jsonl"
    assert view.jsonl("pr", "train") == ws.jsonl("pr", "train") and view.root == ws.root
    rows = read_jsonl(view.jsonl("rm", "train"))
    assert [(r["response"], r["label"]) for r in rows] == [("a mug.", 1), ("A Mug.", 0)]
