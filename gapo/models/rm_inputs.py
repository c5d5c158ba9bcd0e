"""(prompt, response) text pairs -> reward-model token ids, in the reward model's OWN tokenizer.

API
- `encode_pair_ids(tokenizer, prompt, response, max_length, facts=True)` -> (ids, type_ids, truncated) for one pair;
  `facts=False` drops the head (product facts) before anything else: the RM sees `[CLS] Requirements: ... [SEP]
  response [SEP]` (`reward.prompt_facts: drop`, docs/method.md "RM input, head and truncation")
- `split_requirements(prompt)` -> (head, requirements)
- `REQUIREMENTS_HEADER`
Batching (padding, masks, segment ids) is gapo.models.reward_model.collate, shared by every RM path.

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
