"""Preference pairs: the views of data/pp and data/pr records that the RM warm-up and the baselines train on.

A pair is `{key, prompt_chosen, prompt_rejected, chosen, rejected, instruction_id_list, kwargs}`:
- PR (preferential response, data/pr): one prompt, two responses (prompt_chosen == prompt_rejected);
- PP (preferential prompt, data/pp): one response R, two prompts, (chosen_prompt, R) preferred to (rejected_prompt, R).
Pure functions of their rows; the baselines and `reward.pr_fraction` both read pairs through them.
"""
from __future__ import annotations

import random
from typing import Sequence

from gapo.config import ConfigError
from gapo.errors import DataError


def preference_pairs(rows: Sequence[dict], paradigm: str) -> list[dict]:
    """data/pp or data/pr rows -> pairs {key, prompt_chosen, prompt_rejected, chosen, rejected, ...constraints}.

    Constraints kept are the CHOSEN side's (what a correct answer must satisfy)."""
    out = []
    for i, r in enumerate(rows):
        if paradigm == "pp":
            try:
                out.append({"key": r.get("key", i), "prompt_chosen": r["chosen_prompt"],
                            "prompt_rejected": r["rejected_prompt"], "chosen": r["response"],
                            "rejected": r["response"], "instruction_id_list": r.get("chosen_instruction_id_list"),
                            "kwargs": r.get("chosen_kwargs")})
            except KeyError as exc:
                raise DataError(f"preferential-prompt row {i + 1}: missing field {exc.args[0]!r}") from None
        elif paradigm == "pr":
            try:
                out.append({"key": r.get("key", i), "prompt_chosen": r["prompt"], "prompt_rejected": r["prompt"],
                            "chosen": r["chosen"], "rejected": r["rejected"],
                            "instruction_id_list": r.get("instruction_id_list"), "kwargs": r.get("kwargs")})
            except KeyError as exc:
                raise DataError(f"preferential-response row {i + 1}: missing field {exc.args[0]!r}") from None
        else:
            raise ConfigError(f"paradigm {paradigm!r}: expected pp or pr")
    return out


def unpaired_rows(pairs: Sequence[dict]) -> list[dict]:
    """KTO's unpaired view: (prompt_chosen, chosen, desirable) and (prompt_rejected, rejected, undesirable)."""
    out = []
    for p in pairs:
        out.append({"key": p["key"], "prompt": p["prompt_chosen"], "completion": p["chosen"], "label": True})
        out.append({"key": p["key"], "prompt": p["prompt_rejected"], "completion": p["rejected"], "label": False})
    return out


def rm_rows(pairs: Sequence[dict]) -> list[dict]:
    """The classification view (data/rm schema: key, prompt, response, label) of any pairs: GAPO's encoder RM
    trained on PR pairs reads (prompt, chosen) -> 1, (prompt, rejected) -> 0."""
    out = []
    for p in pairs:
        extra = {"instruction_id_list": p.get("instruction_id_list"), "kwargs": p.get("kwargs")}
        out.append({"key": p["key"], "prompt": p["prompt_chosen"], "response": p["chosen"], "label": 1, **extra})
        out.append({"key": p["key"], "prompt": p["prompt_rejected"], "response": p["rejected"], "label": 0, **extra})
    return out


def sample_pairs(pairs: list[dict], limit: int, seed: int) -> list[dict]:
    if not limit or len(pairs) <= limit:
        return list(pairs)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:limit])]
