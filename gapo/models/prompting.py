"""How the policy sees a prompt, and where its response ends: one convention for SFT, PPO, fake sampling and evaluation.

API
- `RESPONSE_MARKER`                       text appended to a prompt when the tokenizer has no chat template
- `format_prompt(prompt, tokenizer)`      prompt text -> the exact text the policy is conditioned on
- `encode_prompt(prompt, tokenizer, max_length=None)`   -> token ids (left-truncated: the requirements stay)
- `encode_sft_example(prompt, completion, tokenizer, max_length)` -> (input_ids, labels), labels = -100 on the prompt
- `eos_token_id(tokenizer)`, `stop_token_ids(tokenizer)`  the ids that end a response
- `decode_response(ids, tokenizer)`       response token ids -> text (cut at the first stop id, specials removed)
- `position_ids_from_mask(attention_mask)` -> LongTensor   positions that skip left padding (the sampler, PPO,
      the critic and evaluation score left-padded rows with them)

EOS convention: a response is the completion's tokens followed by `eos_token_id(tokenizer)`. SFT trains on that
EOS (so the model learns to stop), the sampler stops a row at the first id in `stop_token_ids`, and decoding cuts
there. With a chat template the tokenizer's EOS is the end-of-turn token (SmolLM2: `<|im_end|>`), so the same rule
holds. Prompt and response are tokenised separately and concatenated as ids, never re-tokenised together: the ids
PPO scores are the ids SFT trained on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

# Without a chat template the policy needs an unambiguous "now answer" cue; a markdown heading is short
# in BPE and never occurs in the product prompts.
RESPONSE_MARKER = "\n\n### Response:\n"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(prompt: str, tokenizer) -> str:
    """The text the policy is conditioned on: the chat template (user turn + generation prompt) if the tokenizer
    has one, else the prompt (trailing whitespace removed) followed by `RESPONSE_MARKER`."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt.rstrip() + RESPONSE_MARKER


def eos_token_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        from gapo.errors import ModelError

        raise ModelError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no eos_token: responses "
                         "could never end (set eos_token in its tokenizer_config.json)")
    return int(eos)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus, for chat models, the end-of-turn token when it differs from EOS."""
    ids = [eos_token_id(tokenizer)]
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None and tid not in ids and has_chat_template(tokenizer):
            ids.append(int(tid))
    return ids


def pad_token_id(tokenizer) -> int:
    """Pad id for batching; falls back to EOS (positions are masked, so the value never matters)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else eos_token_id(tokenizer)


def encode_prompt(prompt: str, tokenizer, max_length: int | None = None) -> list[int]:
    """Token ids of `format_prompt(prompt)`. Over `max_length`, the START is dropped (product facts go first,
    the `Requirements:` block and the response cue at the end are kept); a leading BOS is preserved."""
    chat = has_chat_template(tokenizer)
    # A chat template already writes its special tokens; adding them again would double the BOS.
    ids = tokenizer(format_prompt(prompt, tokenizer), add_special_tokens=not chat)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        bos = tokenizer.bos_token_id
        if bos is not None and ids and ids[0] == bos and max_length > 1:
            ids = [bos] + ids[len(ids) - (max_length - 1):]
        else:
            ids = ids[len(ids) - max_length:]
    return list(ids)


def encode_response(completion: str, tokenizer, add_eos: bool = True) -> list[int]:
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        ids.append(eos_token_id(tokenizer))
    return ids


def encode_sft_example(prompt: str, completion: str, tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for completion-only SFT. Over `max_length` the response keeps at least half the
    budget (its tail is cut, losing the EOS), the prompt loses its start."""
    response = encode_response(completion, tokenizer)
    prompt_budget = max_length - min(len(response), max_length // 2)
    prompt_ids = encode_prompt(prompt, tokenizer, max_length=prompt_budget)
    response = response[: max_length - len(prompt_ids)]
    return prompt_ids + response, [-100] * len(prompt_ids) + response


def decode_response(ids: Sequence[int], tokenizer, stop_ids: Sequence[int] | None = None) -> str:
    """Text of a generated response: cut at the first stop id, special tokens dropped, outer whitespace stripped."""
    stops = set(stop_ids if stop_ids is not None else stop_token_ids(tokenizer))
    out = []
    for t in ids:
        t = int(t)
        if t in stops:
            break
        out.append(t)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0,1,2,... over the real tokens of each row; padding gets 1 (any value works, it is masked)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)
