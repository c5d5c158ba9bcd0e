"""The constraint catalogue: which IFEval instructions we use, their arguments and value pools, which of them can
share a prompt, how a product's constraint set is sampled, and the verdicts.

Wording and verdicts are IFEval's own: `describe` calls the checker's `build_description(**kwargs)` and `check`
its `check_following(response)`, with lm-eval's strict rule (None/empty arguments dropped, an empty response
fails). `check_response` is the function the training and evaluation code calls; it runs lm-eval's
`test_instruction_following_strict` itself, so our verdicts and lm-eval's strict scores cannot drift apart.

The subset is the 20 instructions that make sense for a product description (IFEval's language, repeat-prompt,
two-responses, constrained-response and nth-paragraph instructions do not). Numbers are kept small enough for
30-150 word descriptions; each numeric argument has a pool of training values and a pool of held-out values
seen only in the test split (docs/data.md, "Splits").
"""
from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from gapo.data import catalog
from gapo.data.ifeval_checkers import registry, scoring

RELATIONS = ("less than", "at least")

KEYWORDS_EXISTENCE = "keywords:existence"
KEYWORDS_FORBIDDEN = "keywords:forbidden_words"
KEYWORDS_FREQUENCY = "keywords:frequency"
LETTER_FREQUENCY = "keywords:letter_frequency"
NUMBER_WORDS = "length_constraints:number_words"
NUMBER_SENTENCES = "length_constraints:number_sentences"
NUMBER_PARAGRAPHS = "length_constraints:number_paragraphs"
BULLETS = "detectable_format:number_bullet_lists"
TITLE = "detectable_format:title"
JSON_FORMAT = "detectable_format:json_format"
HIGHLIGHTS = "detectable_format:number_highlighted_sections"
SECTIONS = "detectable_format:multiple_sections"
LOWERCASE = "change_case:english_lowercase"
CAPITAL = "change_case:english_capital"
CAPITAL_WORDS = "change_case:capital_word_frequency"
END_CHECKER = "startend:end_checker"
QUOTATION = "startend:quotation"
POSTSCRIPT = "detectable_content:postscript"
PLACEHOLDERS = "detectable_content:number_placeholders"
NO_COMMA = "punctuation:no_comma"

# Required arguments per instruction (all of them: a missing one makes IFEval pick a random value).
ARG_KEYS: dict[str, tuple[str, ...]] = {
    KEYWORDS_EXISTENCE: ("keywords",),
    KEYWORDS_FORBIDDEN: ("forbidden_words",),
    KEYWORDS_FREQUENCY: ("keyword", "frequency", "relation"),
    LETTER_FREQUENCY: ("letter", "let_frequency", "let_relation"),
    NUMBER_WORDS: ("num_words", "relation"),
    NUMBER_SENTENCES: ("num_sentences", "relation"),
    NUMBER_PARAGRAPHS: ("num_paragraphs",),
    BULLETS: ("num_bullets",),
    TITLE: (),
    JSON_FORMAT: (),
    HIGHLIGHTS: ("num_highlights",),
    SECTIONS: ("section_spliter", "num_sections"),
    LOWERCASE: (),
    CAPITAL: (),
    CAPITAL_WORDS: ("capital_frequency", "capital_relation"),
    END_CHECKER: ("end_phrase",),
    QUOTATION: (),
    POSTSCRIPT: ("postscript_marker",),
    PLACEHOLDERS: ("num_placeholders",),
    NO_COMMA: (),
}
INSTRUCTION_IDS: tuple[str, ...] = tuple(ARG_KEYS)
# Arguments of the IFEval instructions we do not generate (user files may use them).
ALL_ARG_KEYS: dict[str, tuple[str, ...]] = {
    **ARG_KEYS,
    "language:response_language": ("language",),
    "length_constraints:nth_paragraph_first_word": ("num_paragraphs", "nth_paragraph", "first_word"),
    "detectable_format:constrained_response": (),
    "combination:two_responses": (),
    "combination:repeat_prompt": ("prompt_to_repeat",),
}

# Argument types of every IFEval instruction (also those we do not generate), for user-file validation and the
# HF dataset schema (the google/IFEval layout: one struct with every argument, None where unused).
KWARG_TYPES: dict[str, type] = {
    "keywords": list, "forbidden_words": list, "keyword": str, "frequency": int, "relation": str,
    "letter": str, "let_frequency": int, "let_relation": str, "num_words": int, "num_sentences": int,
    "num_paragraphs": int, "nth_paragraph": int, "first_word": str, "num_placeholders": int,
    "postscript_marker": str, "num_bullets": int, "num_highlights": int, "section_spliter": str,
    "num_sections": int, "end_phrase": str, "capital_frequency": int, "capital_relation": str,
    "language": str, "prompt_to_repeat": str,
}
RELATION_KWARG = {KEYWORDS_FREQUENCY: "relation", LETTER_FREQUENCY: "let_relation", NUMBER_WORDS: "relation",
                  NUMBER_SENTENCES: "relation", CAPITAL_WORDS: "capital_relation"}
NUMBER_KWARG = {KEYWORDS_FREQUENCY: "frequency", LETTER_FREQUENCY: "let_frequency", NUMBER_WORDS: "num_words",
                NUMBER_SENTENCES: "num_sentences", NUMBER_PARAGRAPHS: "num_paragraphs", BULLETS: "num_bullets",
                HIGHLIGHTS: "num_highlights", SECTIONS: "num_sections", CAPITAL_WORDS: "capital_frequency",
                PLACEHOLDERS: "num_placeholders"}


@dataclass(frozen=True)
class ValuePool:
    """Values a numeric argument takes: `train` everywhere, `held_out` only in the test split."""

    train: tuple[int, ...]
    held_out: tuple[int, ...] = ()


# Keyed by (instruction, relation) for relational instructions, (instruction, None) otherwise.
VALUE_POOLS: dict[tuple[str, Optional[str]], ValuePool] = {
    (NUMBER_WORDS, "less than"): ValuePool((50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150), (65, 85, 105, 125)),
    (NUMBER_WORDS, "at least"): ValuePool((30, 40, 50, 60, 70, 80, 90, 100), (35, 75, 95)),
    (NUMBER_SENTENCES, "less than"): ValuePool((4, 5, 6, 8, 10, 12), (7, 9, 11)),
    (NUMBER_SENTENCES, "at least"): ValuePool((2, 3, 4, 6, 8), (5, 7)),
    (NUMBER_PARAGRAPHS, None): ValuePool((2, 3, 4), (5,)),
    (BULLETS, None): ValuePool((2, 3, 4, 6), (5,)),
    (HIGHLIGHTS, None): ValuePool((1, 2, 3), (4,)),
    (SECTIONS, None): ValuePool((2, 3, 5), (4,)),
    (PLACEHOLDERS, None): ValuePool((1, 2, 4), (3,)),
    (CAPITAL_WORDS, "at least"): ValuePool((1, 2, 3, 5), (4,)),
    (CAPITAL_WORDS, "less than"): ValuePool((3, 4, 6, 8), (5, 7)),
    (KEYWORDS_FREQUENCY, "at least"): ValuePool((2, 3), (4,)),
    (KEYWORDS_FREQUENCY, "less than"): ValuePool((1, 2), (3,)),
    (LETTER_FREQUENCY, "at least"): ValuePool((4, 6, 8, 10, 12), (5, 9)),
    (LETTER_FREQUENCY, "less than"): ValuePool((1, 2, 3, 5), (4,)),
}
COMMON_LETTERS = "aeinorst"
RARE_LETTERS = "jqxzvk"

# -- compatibility -------------------------------------------------------------------------------------------
# A JSON answer cannot also carry markdown structure, a quote wrapper, an end phrase or a postscript that the
# checkers would see, so JSON only combines with lexical, length and lowercase constraints.
_JSON_OK = frozenset({KEYWORDS_EXISTENCE, KEYWORDS_FORBIDDEN, KEYWORDS_FREQUENCY, LETTER_FREQUENCY, NUMBER_WORDS,
                      LOWERCASE, PLACEHOLDERS})
_PAIR_CONFLICTS = frozenset(frozenset(p) for p in (
    (LOWERCASE, CAPITAL), (LOWERCASE, CAPITAL_WORDS), (CAPITAL, CAPITAL_WORDS),
    # "Section"/"SECTION" markers are case-sensitive: they survive neither lowercasing nor (for "Section")
    # uppercasing, so sections and whole-text case changes never meet.
    (LOWERCASE, SECTIONS), (CAPITAL, SECTIONS),
    # Both count blocks of the same text with different dividers; IFEval treats them as conflicting too.
    (NUMBER_PARAGRAPHS, SECTIONS),
))


def ids_compatible(a: str, b: str) -> bool:
    if a == b:
        return False
    if JSON_FORMAT in (a, b):
        other = b if a == JSON_FORMAT else a
        return other in _JSON_OK
    return frozenset((a, b)) not in _PAIR_CONFLICTS


def compatible_pairs() -> list[tuple[str, str]]:
    ids = INSTRUCTION_IDS
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if ids_compatible(a, b)]


# -- constraints and verdicts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraint:
    """One IFEval instruction with its arguments (only that instruction's keys, no None values)."""

    iid: str
    kwargs: dict = field(default_factory=dict, hash=False)

    def describe(self) -> str:
        return describe(self.iid, self.kwargs)

    def check(self, response: str) -> bool:
        return check(self.iid, self.kwargs, response)

    def relation(self) -> Optional[str]:
        key = RELATION_KWARG.get(self.iid)
        return self.kwargs.get(key) if key else None

    def number(self) -> Optional[int]:
        key = NUMBER_KWARG.get(self.iid)
        return self.kwargs.get(key) if key else None



def clean_kwargs(kwargs: dict) -> dict:
    # IFEval's keyword checkers sort their lists in build_description; storing them sorted keeps the record and
    # the description in the same order.
    out = {}
    for k, v in sorted(kwargs.items()):
        if v is None:
            continue
        out[k] = sorted(v) if isinstance(v, list) else v
    return out


def to_ifeval(constraints: Sequence[Constraint]) -> tuple[list[str], list[dict]]:
    return [c.iid for c in constraints], [dict(c.kwargs) for c in constraints]


def _strict_kwargs(kwargs: dict) -> dict:
    # lm-eval's strict scorer drops every falsy argument before build_description; do exactly the same.
    return {k: v for k, v in kwargs.items() if v}


def build_checker(iid: str, kwargs: dict):
    checker = registry().INSTRUCTION_DICT[iid](iid)
    checker.build_description(**_strict_kwargs(kwargs))
    return checker


@functools.lru_cache(maxsize=1 << 14)
def _describe_cached(iid: str, kwargs_json: str) -> str:
    checker = registry().INSTRUCTION_DICT[iid](iid)
    return checker.build_description(**_strict_kwargs(json.loads(kwargs_json)))


def describe(iid: str, kwargs: dict) -> str:
    return _describe_cached(iid, json.dumps(kwargs, sort_keys=True))


@functools.lru_cache(maxsize=1 << 16)
def _check_cached(iid: str, kwargs_json: str, response: str) -> bool:
    checker = build_checker(iid, json.loads(kwargs_json))
    return bool(response.strip()) and bool(checker.check_following(response))


def check(iid: str, kwargs: dict, response: str) -> bool:
    """IFEval strict verdict for one instruction (no prompt-dependent instructions in our catalogue)."""
    return _check_cached(iid, json.dumps(kwargs, sort_keys=True), response)


def check_all(constraints: Iterable[Constraint], response: str) -> list[bool]:
    return [c.check(response) for c in constraints]


# Checkers that run langdetect, punkt or nltk's word tokenizer cost milliseconds; the rest are one regex.
_COSTLY = {LOWERCASE: 3, CAPITAL: 3, CAPITAL_WORDS: 2, NUMBER_SENTENCES: 1}


def all_pass(constraints: Iterable[Constraint], response: str) -> bool:
    """Every constraint satisfied; cheap checks first and stop at the first failure (same verdict as check_all)."""
    return all(c.check(response) for c in sorted(constraints, key=lambda c: _COSTLY.get(c.iid, 0)))


def check_response(response: str, instruction_id_list: Sequence[str], kwargs: Sequence[dict],
                   prompt: str = "") -> tuple[bool, list[bool]]:
    """IFEval strict verdict: (every instruction followed, one bool per instruction).

    Runs lm-eval's own `test_instruction_following_strict`, so it accepts any IFEval instruction id (also the
    ones outside our catalogue; `prompt` is needed only for combination:repeat_prompt).
    """
    if len(instruction_id_list) != len(kwargs):
        raise ValueError(f"{len(instruction_id_list)} instruction ids but {len(kwargs)} kwargs dicts")
    sc = scoring()
    inp = sc.InputExample(key=0, instruction_id_list=list(instruction_id_list), prompt=prompt,
                          kwargs=[dict(k or {}) for k in kwargs])
    out = sc.test_instruction_following_strict(inp, response)
    return bool(out.follow_all_instructions), [bool(x) for x in out.follow_instruction_list]


# -- sampling a product's constraint set ------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingPolicy:
    """How one split samples constraints (built by gapo.data.splits)."""

    banned_pairs: frozenset = frozenset()   # frozenset({a, b}) that may not share a prompt
    held_out_prob: float = 0.0              # chance a numeric argument takes a held-out value (test only)

    def pick(self, rng: random.Random, iid: str, relation: Optional[str],
             ok: Callable[[int], bool] = lambda v: True) -> Optional[int]:
        pool = VALUE_POOLS[(iid, relation)]
        train = [v for v in pool.train if ok(v)]
        held = [v for v in pool.held_out if ok(v)]
        # A training policy (held_out_prob 0) never falls back to a held-out value, even when no training
        # value fits: the caller then drops the instruction instead.
        if held and self.held_out_prob > 0 and (not train or rng.random() < self.held_out_prob):
            return rng.choice(held)
        return rng.choice(train) if train else None


def keyword_vocab(product) -> list[str]:
    """Words keyword instructions may name: the category's one-word benefit adjectives and marketing words."""
    return sorted({w for w in product.spec.adjectives if w.isalpha()} | set(catalog.MARKETING_WORDS))


def _contains_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) is not None


def product_text(product) -> str:
    return " ".join([product.name, product.use, *(v for _, v in product.attributes)])


def _structure(chosen: dict[str, Constraint]) -> tuple[int, int]:
    """Rough lower bounds (words, sentences) the structural constraints force on any answer."""
    n = lambda iid: chosen[iid].number() if iid in chosen else 0  # noqa: E731
    blocks = max(n(SECTIONS), n(NUMBER_PARAGRAPHS))
    words = 20 + 4 * n(BULLETS) + 8 * max(blocks - 1, 0) + 4 * n(PLACEHOLDERS)
    words += 7 * (POSTSCRIPT in chosen) + 5 * (END_CHECKER in chosen) + 4 * (TITLE in chosen)
    words += 6 * (len(chosen[KEYWORDS_EXISTENCE].kwargs["keywords"]) if KEYWORDS_EXISTENCE in chosen else 0)
    sentences = 2 + max(blocks - 1, 0) + (POSTSCRIPT in chosen) + (END_CHECKER in chosen) + (PLACEHOLDERS in chosen)
    sentences += (n(BULLETS) + 1) // 2
    return words, sentences


# Arguments are sampled in this order so that later choices can respect earlier ones (a word limit that leaves
# room for 5 sections, a rare letter that the end phrase does not contain, ...).
SAMPLE_ORDER = (JSON_FORMAT, QUOTATION, TITLE, SECTIONS, NUMBER_PARAGRAPHS, BULLETS, HIGHLIGHTS, PLACEHOLDERS,
                POSTSCRIPT, END_CHECKER, LOWERCASE, CAPITAL, NO_COMMA, KEYWORDS_EXISTENCE, KEYWORDS_FORBIDDEN,
                KEYWORDS_FREQUENCY, NUMBER_WORDS, NUMBER_SENTENCES, CAPITAL_WORDS, LETTER_FREQUENCY)


def _sample_kwargs(iid: str, product, chosen: dict[str, Constraint], rng: random.Random,
                   policy: SamplingPolicy) -> Optional[dict]:
    """Arguments for `iid` that fit the product and the constraints already chosen, or None."""
    pick = policy.pick
    fixed = product_text(product)
    if iid in (TITLE, JSON_FORMAT, LOWERCASE, CAPITAL, QUOTATION, NO_COMMA):
        return {}
    if iid in (NUMBER_PARAGRAPHS, BULLETS, HIGHLIGHTS, PLACEHOLDERS):
        v = pick(rng, iid, None)
        return None if v is None else {NUMBER_KWARG[iid]: v}
    if iid == SECTIONS:
        v = pick(rng, iid, None)
        return None if v is None else {"section_spliter": rng.choice(catalog.SECTION_SPLITTERS), "num_sections": v}
    if iid == POSTSCRIPT:
        return {"postscript_marker": rng.choice(catalog.POSTSCRIPT_MARKERS)}
    if iid == END_CHECKER:
        phrases = list(catalog.END_PHRASES)
        if NO_COMMA in chosen:
            phrases = [p for p in phrases if "," not in p]
        return {"end_phrase": rng.choice(phrases)}
    vocab = [w for w in keyword_vocab(product) if not _contains_word(fixed, w)]
    if iid == KEYWORDS_EXISTENCE:
        k = rng.choice((1, 2, 2))
        return {"keywords": sorted(rng.sample(vocab, k))} if len(vocab) >= k else None
    if iid == KEYWORDS_FORBIDDEN:
        taken = set(chosen[KEYWORDS_EXISTENCE].kwargs["keywords"]) if KEYWORDS_EXISTENCE in chosen else set()
        # Forbid words the writer would naturally use (its adjectives and marketing words) so the constraint
        # changes the text; never words of the product facts, which every faithful description repeats.
        cands = [w for w in vocab if w not in taken and not any(w in t or t in w for t in taken)]
        k = rng.choice((1, 2, 3))
        return {"forbidden_words": sorted(rng.sample(cands, k))} if len(cands) >= k else None
    if iid == KEYWORDS_FREQUENCY:
        relation = rng.choice(RELATIONS)
        avoid = set(chosen[KEYWORDS_FORBIDDEN].kwargs["forbidden_words"]) if KEYWORDS_FORBIDDEN in chosen else set()
        must = set(chosen[KEYWORDS_EXISTENCE].kwargs["keywords"]) if KEYWORDS_EXISTENCE in chosen else set()
        if relation == "at least":
            options = [product.brand, product.noun_lower] + [w for w in vocab if w not in avoid]
            keyword = options[0] if rng.random() < 0.4 else rng.choice(options[1:])
        else:
            options = [w for w in vocab if w not in must and w not in avoid]
            if not options:
                return None
            keyword = rng.choice(options)
        v = pick(rng, iid, relation)
        return None if v is None else {"keyword": keyword, "frequency": v, "relation": relation}
    if iid == NUMBER_WORDS:
        min_words, _ = _structure(chosen)
        relation = rng.choice(RELATIONS)
        if relation == "less than":
            v = pick(rng, iid, relation, lambda x: x >= min_words + 25)
        else:
            v = pick(rng, iid, relation, lambda x: x <= 100)
        return None if v is None else {"num_words": v, "relation": relation}
    if iid == NUMBER_SENTENCES:
        _, min_sent = _structure(chosen)
        words = chosen.get(NUMBER_WORDS)
        relation = rng.choice(RELATIONS)
        if relation == "less than":
            # Long answers need enough sentences: about 18 words per sentence at most.
            need = min_sent + 2 + (words.number() // 18 if words and words.relation() == "at least" else 0)
            v = pick(rng, iid, relation, lambda x: x >= need)
        else:
            cap = (words.number() - 10) // 9 if words and words.relation() == "less than" else 9
            v = pick(rng, iid, relation, lambda x: x <= cap)
        return None if v is None else {"num_sentences": v, "relation": relation}
    if iid == CAPITAL_WORDS:
        relation = rng.choice(RELATIONS)
        if relation == "less than":
            # Capitals we cannot avoid: acronyms in the facts, SECTION markers, the postscript marker.
            base = sum(1 for w in fixed.split() if w.isupper())
            base += chosen[SECTIONS].number() if SECTIONS in chosen else 0
            base += 1 if POSTSCRIPT in chosen else 0
            v = pick(rng, iid, relation, lambda x: x >= base + 3)
        else:
            v = pick(rng, iid, relation)
        return None if v is None else {"capital_frequency": v, "capital_relation": relation}
    if iid == LETTER_FREQUENCY:
        relation = rng.choice(RELATIONS)
        if relation == "at least":
            letter = rng.choice(COMMON_LETTERS)
            v = pick(rng, iid, relation)
        else:
            must_text = " ".join([product.fixed_text(), product.use] + [
                " ".join(c.kwargs.get("keywords", [])) + " " + c.kwargs.get("end_phrase", "")
                + " " + c.kwargs.get("postscript_marker", "")
                + (" " + c.kwargs["keyword"] if c.relation() == "at least" and "keyword" in c.kwargs else "")
                for c in chosen.values()]).lower()
            letters = [x for x in RARE_LETTERS if x not in must_text]
            if not letters:
                return None
            letter = rng.choice(letters)
            v = pick(rng, iid, relation)
        return None if v is None else {"letter": letter, "let_frequency": v, "let_relation": relation}
    raise KeyError(iid)


def sample_constraints(product, rng: random.Random, k: int, policy: SamplingPolicy,
                       seed_ids: Sequence[str] = ()) -> Optional[list[Constraint]]:
    """k compatible constraints for `product` (starting from `seed_ids`), in random prompt order, or None."""
    ids = list(seed_ids)
    while len(ids) < k:
        options = [i for i in INSTRUCTION_IDS
                   if all(ids_compatible(i, j) and frozenset((i, j)) not in policy.banned_pairs for j in ids)]
        if not options:
            return None
        ids.append(rng.choice(options))
    chosen: dict[str, Constraint] = {}
    for iid in sorted(ids, key=SAMPLE_ORDER.index):
        kwargs = _sample_kwargs(iid, product, chosen, rng, policy)
        if kwargs is None:
            return None
        chosen[iid] = Constraint(iid, clean_kwargs(kwargs))
    order = list(ids)
    rng.shuffle(order)
    return [chosen[i] for i in order]
