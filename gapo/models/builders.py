"""Models built offline from a config: tokenizers trained on the local corpus, a Llama generator and a BERT encoder RM.

API
- `corpus_texts(ws, include_rm=False)`           the texts tokenizers are trained on (data/sft/train.jsonl, ...)
- `train_bpe_tokenizer(texts, vocab_size)`       byte-level BPE for the generator (eos `<|endoftext|>`, pad `<|pad|>`)
- `train_wordpiece_tokenizer(texts, vocab_size)` WordPiece with BERT's `[CLS] A [SEP] B [SEP]` pair template
- `build_llama(arch, tokenizer, seed)`           `LlamaForCausalLM` (tied embeddings) sized by `ArchConfig`
- `build_bert_classifier(arch, tokenizer, seed)` `BertForSequenceClassification(num_labels=1)`: the encoder RM
- `param_count(model)`

Nothing here downloads: tokenizers are trained in-process (seconds) and weights are random-initialised from a
seed, so `builtin:llama-*` / `builtin:bert-tiny` are reproducible from the data alone.
"""
from __future__ import annotations

from typing import Iterable

from gapo.config import ArchConfig
from gapo.errors import DataError
from gapo.paths import Workspace

BPE_EOS, BPE_PAD = "<|endoftext|>", "<|pad|>"
WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_texts(ws: Workspace, include_rm: bool = False, max_rows: int = 0) -> list[str]:
    """Prompt + response-marker + completion of each SFT training row (the generator's whole world), plus the
    RM training prompts when `include_rm` (perturbed constraints use words the SFT prompts may not contain)."""
    from gapo.io import read_jsonl
    from gapo.models.prompting import RESPONSE_MARKER

    path = ws.jsonl("sft", "train")
    if not path.exists():
        raise DataError(f"{path}: not found; the builtin models train their tokenizer on it (run `gapo prepare` first)")
    rows = read_jsonl(path)
    if max_rows:
        rows = rows[:max_rows]
    texts = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise DataError(f"{path} line {i}: expected string fields 'prompt' and 'completion'")
        texts.append(r["prompt"].rstrip() + RESPONSE_MARKER + r["completion"])
    rm_path = ws.jsonl("rm", "train")
    if include_rm and rm_path.exists():
        texts.extend(r["prompt"] for r in read_jsonl(rm_path)[: max_rows or None] if isinstance(r.get("prompt"), str))
    if not texts:
        raise DataError(f"{path}: no rows to train a tokenizer on")
    return texts


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    # The full byte alphabet as initial tokens: any text (emoji, other scripts) stays encodable and
    # round-trips exactly, even if the corpus never showed it.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[BPE_EOS, BPE_PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=BPE_EOS, bos_token=BPE_EOS, pad_token=BPE_PAD,
                                   model_max_length=max_length)


# Continuation characters during WordPiece training: c -> chr(_CONTINUATION + ord(c)) (Supplementary Private Use
# Area-A, which no corpus text uses), so that "##c" is a character of the alphabet instead of a token the trainer
# creates on the fly (train_wordpiece_tokenizer).
_CONTINUATION = 0xF0000


def _mark_continuations(word: str) -> str:
    return word[:1] + "".join(chr(_CONTINUATION + ord(c)) if ord(c) < 0x10000 else c for c in word[1:])


def _unmark(token: str) -> str:
    """A BPE token of marked words -> its WordPiece spelling ("##" + text for a token inside a word)."""
    plain = "".join(chr(ord(c) - _CONTINUATION) if ord(c) >= _CONTINUATION and ord(c) < _CONTINUATION + 0x10000
                    else c for c in token)
    inside = token and _CONTINUATION <= ord(token[0]) < _CONTINUATION + 0x10000
    return "##" + plain if inside else plain


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 512, lowercase: bool = False):
    """Cased by default: IFEval has case constraints ("all lowercase", "all capitals") an uncased RM cannot see.

    The vocabulary is what `WordPieceTrainer` learns (BPE merges over words whose non-initial characters are
    "##" pieces), trained so that the same texts always give the same vocabulary: `WordPieceTrainer` itself does
    not (huggingface/tokenizers#1794: it numbers the "##" pieces in hash-map order, and those numbers break ties
    between equally frequent merges), which made the `models` stage, and every weight after it, differ from run to
    run. Here a word's non-initial characters are mapped to private-use characters first, so every piece is in the
    sorted initial alphabet, a plain BPE trainer (deterministic) learns the merges, and the tokens are mapped back."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False if not lowercase else None)
    split = pre_tokenizers.BertPreTokenizer()
    words = [[w for w, _ in split.pre_tokenize_str(normalizer.normalize_str(t))] for t in texts]
    alphabet = sorted({c for ws in words for w in ws for c in w})
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator((" ".join(_mark_continuations(w) for w in ws) for ws in words),
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=WP_SPECIALS, min_frequency=0,
                                                initial_alphabet=alphabet, show_progress=False))
    vocab: dict[str, int] = {}
    for token, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]):
        vocab.setdefault(_unmark(token), len(vocab))
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.normalizer = normalizer
    wp.pre_tokenizer = split
    wp.decoder = decoders.WordPiece()
    # The template must be set after training: [CLS]/[SEP] ids only exist once the vocabulary does.
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length,
                                   # BERT has segment embeddings: prompt = segment 0, response = segment 1.
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def _check_heads(arch: ArchConfig, what: str) -> None:
    from gapo.config import ConfigError

    if arch.hidden_size % arch.num_heads:
        raise ConfigError(f"models.{what}: hidden_size {arch.hidden_size} is not divisible by num_heads {arch.num_heads}")


def build_llama(arch: ArchConfig, tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _check_heads(arch, "policy_arch")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def build_bert_classifier(arch: ArchConfig, tokenizer, seed: int = 0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    _check_heads(arch, "reward_arch")
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
                     num_attention_heads=arch.num_heads, intermediate_size=arch.intermediate_size,
                     max_position_embeddings=arch.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                     num_labels=1)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
