"""Tokenizers trained locally, models built from ArchConfig, and the prompt/EOS convention."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.models import tiny_assets as ta

from gapo.config import ArchConfig
from gapo.models import builders, prompting

TEXTS = [f"Product: mug {i}\nRequirements:\n- Answer with less than {i + 20} words, café ☕ ok." for i in range(60)]


@pytest.fixture(scope="module")
def bpe():
    return builders.train_bpe_tokenizer(TEXTS, 400)


@pytest.fixture(scope="module")
def wordpiece():
    return builders.train_wordpiece_tokenizer(TEXTS, 300)


def test_bpe_round_trips_any_text_and_has_eos_pad(bpe):
    text = "Unseen: naïve 東京 🙂 tabs\tand\nnewlines"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text  # byte-level: exact even for characters the corpus never had
    assert bpe.eos_token == builders.BPE_EOS and bpe.pad_token == builders.BPE_PAD
    assert bpe.eos_token_id != bpe.pad_token_id


def test_wordpiece_pair_template_and_token_types(wordpiece):
    enc = wordpiece("Requirements: less", "a mug", add_special_tokens=True)
    toks = wordpiece.convert_ids_to_tokens(enc["input_ids"])
    assert toks[0] == "[CLS]" and toks.count("[SEP]") == 2 and toks[-1] == "[SEP]"
    first_sep = toks.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(toks) - first_sep - 1)
    assert "Requirements" in toks  # cased: case constraints stay visible to the RM


def test_llama_and_bert_follow_arch(bpe, wordpiece):
    arch = ArchConfig(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128, vocab_size=400,
                      max_position_embeddings=128)
    lm = builders.build_llama(arch, bpe, seed=3)
    c = lm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (64, 3, 4, 128)
    assert c.vocab_size == len(bpe) and c.tie_word_embeddings and c.eos_token_id == bpe.eos_token_id
    # Tied embeddings: the LM head shares the input embedding's storage.
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    # Same seed, same weights; another seed, other weights.
    import torch

    assert torch.equal(builders.build_llama(arch, bpe, seed=3).model.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert not torch.equal(builders.build_llama(arch, bpe, seed=4).model.embed_tokens.weight,
                           lm.model.embed_tokens.weight)
    rm = builders.build_bert_classifier(arch, wordpiece)
    assert rm.config.num_labels == 1 and rm.config.vocab_size == len(wordpiece)


def test_bad_head_count_is_a_config_error(bpe):
    from gapo.config import ConfigError

    with pytest.raises(ConfigError, match="not divisible"):
        builders.build_llama(ArchConfig(hidden_size=66, num_heads=4), bpe)


def test_format_prompt_without_and_with_chat_template(bpe):
    assert prompting.format_prompt("Do it.\n", bpe) == "Do it." + prompting.RESPONSE_MARKER
    import copy

    chat = copy.deepcopy(bpe)
    chat.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    assert prompting.format_prompt("Do it.", chat) == "<u>Do it.</u><a>"


def test_sft_example_masks_prompt_and_ends_with_eos(bpe):
    ids, labels = prompting.encode_sft_example("Describe the mug.", "A fine mug.", bpe, max_length=128)
    prompt_ids = prompting.encode_prompt("Describe the mug.", bpe)
    assert ids[: len(prompt_ids)] == prompt_ids and labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert ids[-1] == bpe.eos_token_id
    assert prompting.decode_response(ids[len(prompt_ids):] + [bpe.pad_token_id] * 3, bpe) == "A fine mug."


def test_long_prompt_loses_its_start_not_the_requirements(bpe):
    prompt = "facts " * 200 + "\nRequirements:\n- Answer with less than 30 words."
    ids, labels = prompting.encode_sft_example(prompt, "Short answer.", bpe, max_length=64)
    assert len(ids) == 64
    text = bpe.decode(ids)
    assert text.endswith("Requirements:\n- Answer with less than 30 words." + prompting.RESPONSE_MARKER
                         + "Short answer." + bpe.eos_token)


def test_corpus_texts_needs_data(tmp_path):
    from gapo.errors import DataError
    from gapo.paths import Workspace

    with pytest.raises(DataError, match="gapo prepare"):
        builders.corpus_texts(Workspace(tmp_path))
    ws = Workspace(tmp_path)
    ta.write_fixture_data(ws, n_train=5, n_val=1, n_test=1)
    texts = builders.corpus_texts(ws, include_rm=True)
    assert len(texts) == 5 + 10 and prompting.RESPONSE_MARKER in texts[0]


_TRAIN_IN_A_FRESH_PROCESS = """
import hashlib
from tests.models.test_builders_prompting import TEXTS
from gapo.models import builders
print(hashlib.md5(builders.train_wordpiece_tokenizer(TEXTS, 300).backend_tokenizer.to_str().encode()).hexdigest())
"""


def test_wordpiece_training_gives_the_same_vocabulary_in_every_process():
    """tokenizers' WordPieceTrainer numbers its "##" pieces in hash-map order (a new random order per process) and
    learned a different vocabulary on these texts in 4 of 4 processes; ours must not (the `models` stage of the
    tiny profile is rerun after a kill and must rebuild the same RM)."""
    import subprocess

    digests = {subprocess.run([sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS],
                              cwd=Path(__file__).parents[2], capture_output=True, text=True, check=True, timeout=300).stdout.strip()
               for _ in range(4)}
    assert len(digests) == 1, digests
