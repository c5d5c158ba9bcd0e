"""Tiny data and models for the model/training tests (imported by tests/models and tests/train).

`tiny_workspace(root)` fills a workspace with data (the real prepare stage on the tiny profile when
`gapo.data.prepare.run_prepare` exists, else `write_fixture_data`) and runs the `models` stage on the tiny
profile. `write_fixture_data` is a small deterministic generator in the documented schema
(docs/architecture.md): product facts + a `Requirements:` block, a reference description that satisfies it, and
the preferential-prompt classification view (the same response under the accepted prompt -> 1 and under a
prompt whose constraint was modified or inserted so the response breaks it -> 0).
"""
from __future__ import annotations

import random
from pathlib import Path

from gapo.io import write_jsonl

PROFILE = "tiny"

_PRODUCTS = {
    "t-shirt": (["cotton", "linen", "bamboo"], ["soft", "breathable", "light"]),
    "mug": (["ceramic", "stoneware", "enamel"], ["sturdy", "glossy", "warm"]),
    "backpack": (["nylon", "canvas", "leather"], ["roomy", "durable", "padded"]),
    "lamp": (["brass", "oak", "glass"], ["bright", "elegant", "slim"]),
    "blanket": (["wool", "fleece", "cotton"], ["cozy", "thick", "warm"]),
    "kettle": (["steel", "copper", "glass"], ["fast", "quiet", "sleek"]),
}
_COLOURS = ["red", "blue", "green", "black", "white", "grey", "yellow"]
_EXTRA_KEYWORDS = ["gift", "travel", "office", "kitchen", "summer", "winter", "garden", "camping"]


def _describe(rng: random.Random, name: str, colour: str, material: str, adjective: str, keyword: str | None,
              no_comma: bool, lowercase: bool) -> str:
    sep = " and" if no_comma else ","
    parts = [
        f"This {colour} {name} is made of {material}{sep} so it feels {adjective} every day.",
        f"The {material} finish keeps the {name} {adjective} and easy to care for.",
        f"Choose this {name} when you want something {adjective}{sep} simple and reliable.",
    ]
    rng.shuffle(parts)
    text = " ".join(parts[: rng.randint(2, 3)])
    if keyword:
        text += f" It is a perfect {keyword} companion."
    if lowercase:
        text = text.lower()
    return text


def _build_row(rng: random.Random, key: str):
    name = rng.choice(sorted(_PRODUCTS))
    materials, adjectives = _PRODUCTS[name]
    colour, material, adjective = rng.choice(_COLOURS), rng.choice(materials), rng.choice(adjectives)
    keyword = rng.choice(_EXTRA_KEYWORDS)
    cons = rng.sample(["keyword", "no_comma", "lowercase", "max_words"], k=rng.randint(1, 3))
    text = _describe(rng, name, colour, material, adjective, keyword if "keyword" in cons else None,
                     "no_comma" in cons, "lowercase" in cons)
    n_words = len(text.split())
    limit = n_words + rng.randint(3, 15)
    lines, ids, kwargs = [], [], []
    for c in cons:
        if c == "keyword":
            lines.append(f"Include keywords {keyword} in the response.")
            ids.append("keywords:existence")
            kwargs.append({"keywords": [keyword]})
        elif c == "no_comma":
            lines.append("In your entire response, refrain from the use of any commas.")
            ids.append("punctuation:no_comma")
            kwargs.append({})
        elif c == "lowercase":
            lines.append("Your entire response should be in English, and in all lowercase letters.")
            ids.append("change_case:english_lowercase")
            kwargs.append({})
        else:
            lines.append(f"Answer with less than {limit} words.")
            ids.append("length_constraints:number_words")
            kwargs.append({"relation": "less than", "num_words": limit})
    facts = f"Write a product description.\nProduct: {name}\nColour: {colour}\nMaterial: {material}\n"
    prompt = facts + "\nRequirements:\n" + "\n".join(f"- {x}" for x in lines)
    # Rejected prompt: modify one constraint so the fixed response breaks it, or insert a conflicting one.
    target = rng.choice(cons)
    rej_lines = list(lines)
    i = cons.index(target)
    if target == "keyword":
        other = rng.choice([k for k in _EXTRA_KEYWORDS if k != keyword])
        rej_lines[i] = f"Include keywords {other} in the response."
    elif target == "max_words":
        rej_lines[i] = f"Answer with less than {max(5, n_words - rng.randint(5, 20))} words."
    elif target == "lowercase":
        rej_lines[i] = "Your entire response should be in English, and in all capital letters."
    else:  # insert: forbid a word the response uses
        rej_lines.append(f"Do not include keywords {material} in the response.")
    rejected = facts + "\nRequirements:\n" + "\n".join(f"- {x}" for x in rej_lines)
    sft = {"key": key, "category": name, "prompt": prompt, "completion": text, "instruction_id_list": ids,
           "kwargs": kwargs}
    rm = [{"key": key, "prompt": prompt, "response": text, "label": 1, "instruction_id_list": ids, "kwargs": kwargs},
          {"key": key, "prompt": rejected, "response": text, "label": 0, "instruction_id_list": ids,
           "kwargs": kwargs}]
    return sft, rm


def write_fixture_data(ws, n_train: int = 400, n_val: int = 60, n_test: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        sft_rows, rm_rows = [], []
        for i in range(n):
            s, r = _build_row(rng, f"{split}-{i:05d}")
            sft_rows.append(s)
            rm_rows.extend(r)
        write_jsonl(ws.jsonl("sft", split), sft_rows)
        write_jsonl(ws.jsonl("rm", split), rm_rows)


def tiny_params(*overrides: str):
    from gapo.config import load_params

    return load_params(None, list(overrides), profile=PROFILE)


def prepare_data(ws, params) -> str:
    """Real tiny data when the prepare stage exists, else the fixture. Returns which one was used."""
    try:
        from gapo.data.prepare import run_prepare
    except ImportError:
        write_fixture_data(ws)
        return "fixture"
    run_prepare(params, ws)
    return "prepare"


def tiny_workspace(root: Path, *overrides: str):
    from gapo.models.materialize import run_models
    from gapo.paths import Workspace

    ws = Workspace(Path(root))
    params = tiny_params(*overrides)
    prepare_data(ws, params)
    run_models(params, ws)
    return ws, params
