"""(prompt, response) text pairs -> reward-model inputs, in the reward model's OWN tokenizer.

API
- `encode_pairs(tokenizer, prompts, responses, max_length, facts=True)` -> dict of padded LongTensors
  (`input_ids`, `attention_mask`, `token_type_ids` when the model uses them) and `truncated` (bool per row)
- `encode_pair_ids(tokenizer, prompt, response, max_length, facts=True)` -> (ids, type_ids, truncated) for one pair;
  `facts=False` drops the head (product facts) before anything else: the RM sees `[CLS] Requirements: ... [SEP]
  response [SEP]` (`reward.prompt_facts: drop`, docs/method.md "RM input, head and truncation")
- `split_requirements(prompt)` -> (head, requirements)
- `REQUIREMENTS_HEADER`

The policy's token ids never reach the RM: responses are decoded to text first and re-tokenised here, so policy and
RM may have different vocabularies (GAPO's encoder RM is a different model family from its generator).

Truncation policy (the RM must always see the constraints it judges). Prompts are product facts followed by a
`Requirements:` block; the block runs from the LAST line starting with `Requirements:` to the end of the prompt.
With `budget = max_length - special tokens` and R, H, S the token counts of the requirements, the head (facts) and
the response:
1. Everything fits: nothing is cut.
2. Otherwise the head loses tokens FROM ITS START (the facts nearest the requirements survive) until it fits.
3. If the requirements plus the full response still exceed the budget, the head is dropped entirely and the
   response loses its TAIL.
4. The requirements are never cut while they fit in `budget - min(S, budget // 2)`, i.e. the response always keeps
   at least half the window (or all of itself). Only if the requirements alone exceed that do they lose their
   start, as a last resort, and the row is flagged `truncated`.
A prompt without a `Requirements:` line (e.g. a user's free-text IFEval prompt) is treated as all requirements:
its start is cut last (rule 4). Pieces are tokenised separately and joined as token sequences, so a cut never
splits a word (for WordPiece, and for byte-level BPE the cut is on token boundaries).
"""
from __future__ import annotations

import weakref
from typing import Sequence

REQUIREMENTS_HEADER = "Requirements:"

_BACKENDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def split_requirements(prompt: str) -> tuple[str, str]:
    """(head, requirements): split before the last line that starts with `Requirements:`."""
    idx = -1
    start = 0
    while True:
        j = prompt.find(REQUIREMENTS_HEADER, start)
        if j < 0:
            break
        if j == 0 or prompt[j - 1] == "\n":
            idx = j
        start = j + 1
    if idx < 0:
        return "", prompt
    return prompt[:idx], prompt[idx:]


def _backend(tokenizer):
    """A copy of the Rust tokenizer with padding/truncation off (sentence-transformers checkpoints such as
    all-MiniLM ship tokenizer.json with padding to 128 and truncation switched on)."""
    bt = _BACKENDS.get(tokenizer)
    if bt is None:
        from tokenizers import Tokenizer

        bt = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        bt.no_padding()
        bt.no_truncation()
        _BACKENDS[tokenizer] = bt
    return bt


def encode_pair_ids(tokenizer, prompt: str, response: str, max_length: int,
                    facts: bool = True) -> tuple[list[int], list[int], bool]:
    from tokenizers import Encoding

    bt = _backend(tokenizer)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a prompt and a response")
    head_text, req_text = split_requirements(prompt)
    if not facts:
        head_text = ""
    head = bt.encode(head_text, add_special_tokens=False) if head_text else None
    req = bt.encode(req_text, add_special_tokens=False)
    resp = bt.encode(response, add_special_tokens=False)
    h, r, s = (len(head) if head is not None else 0), len(req), len(resp)
    truncated = h + r + s > budget
    if truncated:
        room_for_req = budget - min(s, budget // 2)
        if r > room_for_req:  # rule 4, last resort
            req.truncate(room_for_req, direction="left")
            r = room_for_req
        head_room = budget - r - s
        if head is not None:
            if head_room <= 0:
                head = None
            elif head_room < h:  # rule 2
                head.truncate(head_room, direction="left")
        if head_room < 0:  # rule 3
            resp.truncate(budget - r, direction="right")
    prompt_enc = Encoding.merge([head, req], growing_offsets=True) if head is not None else req
    final = bt.post_process(prompt_enc, resp, add_special_tokens=True)
    return list(final.ids), list(final.type_ids), truncated


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                 facts: bool = True) -> dict:
    """Right-padded batch for `AutoModelForSequenceClassification`; `token_type_ids` only if the tokenizer
    produces them (BERT-style) so RoBERTa-style models do not get a segment embedding they lack."""
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [encode_pair_ids(tokenizer, p, s, max_length, facts) for p, s in zip(prompts, responses)]
    width = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_types, _) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        types[i, : len(row_types)] = torch.tensor(row_types)
        mask[i, : len(row_ids)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "truncated": torch.tensor([t for _, _, t in rows])}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        out["token_type_ids"] = types
    return out


def model_inputs(batch: dict) -> dict:
    """The keys a sequence-classification forward accepts (drops bookkeeping such as `truncated`)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
