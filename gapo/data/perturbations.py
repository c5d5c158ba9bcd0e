"""GAPO's constraint-aware augmentation: turn a satisfied constraint set into one the same response violates.

Two operators (arXiv 2503.20194):
- `modify`: constraint j gets new arguments the response fails: a count moved past the response's own count,
  a relation flipped, a keyword swapped for an absent word, a present word forbidden, another end phrase or
  postscript marker, the other section marker. An instruction without arguments (title, JSON, quotation,
  lowercase, capitals, no-comma) has nothing to modify, so it is swapped for a failing sibling from its IFEval
  group (lowercase -> capitals, title -> JSON ...); no_comma is alone in its group and borrows startend's.
- `insert`: a constraint of a type the prompt does not have yet, with arguments the response fails. It may also
  conflict with the other constraints; the paper's insertion allows that.

Candidates are computed from the response's own counts (IFEval's counting rules), but a candidate is only used
once the IFEval checker itself says the response fails it. Numbers held out for the test split never appear
in a training or validation candidate.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Optional, Sequence

from gapo.data import catalog
from gapo.data import constraints as C
from gapo.data.ifeval_checkers import util

_STOP = frozenset("""this that with from your have will into they them their there what when which while about
also just more most very such than then these those each every been were being over only some it's""".split())

# Whether a numeric value may be used: (iid, relation, value) -> bool. Training splits reject held-out values.
ValueFilter = Callable[[str, Optional[str], int], bool]


def allow_all(iid: str, relation: Optional[str], value: int) -> bool:  # noqa: ARG001 (a constraint filter's signature)
    return True


def no_held_out(iid: str, relation: Optional[str], value: int) -> bool:
    pool = C.VALUE_POOLS.get((iid, relation))
    return pool is None or value not in pool.held_out


# -- IFEval's counting rules (the checkers only answer yes/no; perturbations need the counts) ------------------
def count_paragraphs(text: str) -> int:
    parts = re.split(r"\s?\*\*\*\s?", text)
    n = len(parts)
    for i, part in enumerate(parts):
        if not part.strip() and i in (0, len(parts) - 1):
            n -= 1
    return n


def count_bullets(text: str) -> int:
    return len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)) + \
        len(re.findall(r"^\s*-.*$", text, flags=re.MULTILINE))


def count_highlights(text: str) -> int:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip())
    return n


def count_sections(text: str, splitter: str) -> int:
    return len(re.split(r"\s?" + splitter + r"\s?\d+\s?", text)) - 1


def count_placeholders(text: str) -> int:
    return len(re.findall(r"\[.*?\]", text))


def count_capital_words(text: str) -> int:
    return sum(1 for w in util().nltk.word_tokenize(text) if w.isupper())


def keyword_count(text: str, keyword: str) -> int:
    return len(re.findall(keyword, text, flags=re.IGNORECASE))


def content_words(text: str) -> list[str]:
    seen, out = set(), []
    for w in re.findall(r"[A-Za-z]{4,}", text):
        lw = w.lower()
        if lw not in _STOP and lw not in seen:
            seen.add(lw)
            out.append(lw)
    return out


def _present(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) is not None


# -- candidates per instruction --------------------------------------------------------------------------------
class Perturber:
    """Failing constraints for one response. `vocab` holds the words keyword constraints may name."""

    def __init__(self, response: str, vocab: Sequence[str], rng: random.Random, allow: ValueFilter = allow_all):
        self.r = response
        self.vocab = list(vocab)
        self.rng = rng
        self.allow = allow
        self._cache: dict = {}

    def stat(self, name: str, fn: Callable[[], int]) -> int:
        if name not in self._cache:
            self._cache[name] = fn()
        return self._cache[name]

    def words(self) -> int:
        return self.stat("words", lambda: util().count_words(self.r))

    def sentences(self) -> int:
        return self.stat("sentences", lambda: util().count_sentences(self.r))

    def capitals(self) -> int:
        return self.stat("capitals", lambda: count_capital_words(self.r))

    def ok(self, iid: str, relation: Optional[str], value: int) -> bool:
        return value >= 1 and self.allow(iid, relation, value)

    # A numeric argument the response fails: "less than n" needs n <= count, "at least n" needs n > count.
    def relational(self, iid: str, count: int, relation: Optional[str], number: Optional[int],
                   round_to: int = 1) -> list[tuple[str, int]]:
        out = []
        down = (count // round_to) * round_to if round_to > 1 else count
        ups = [((count // round_to) + 1) * round_to, ((count // round_to) + 2) * round_to] if round_to > 1 \
            else [count + 1, count + 2]
        lesses = [("less than", v) for v in (down, down - round_to, max(count - 1, 1)) if 1 <= v <= count]
        atleasts = [("at least", v) for v in ups]
        if relation == "at least":
            out = atleasts + lesses     # change the count first, then flip the relation
        elif relation == "less than":
            out = lesses + atleasts
        else:
            out = atleasts + lesses
            self.rng.shuffle(out)
        seen, uniq = set(), []
        for rel, v in out:
            if (rel, v) not in seen and self.ok(iid, rel, v) and (rel, v) != (relation, number):
                seen.add((rel, v))
                uniq.append((rel, v))
        return uniq

    def exact(self, iid: str, count: int, current: Optional[int]) -> list[int]:
        opts = [count + 1, count - 1, count + 2]
        self.rng.shuffle(opts)
        return [v for v in opts if v != count and v != current and self.ok(iid, None, v)]

    def at_least_more(self, iid: str, count: int) -> list[int]:
        return [v for v in (count + 1, count + 2) if self.ok(iid, None, v)]

    def absent_words(self) -> list[str]:
        words = [w for w in self.vocab if not re.search(w, self.r, flags=re.IGNORECASE)]
        self.rng.shuffle(words)
        return words

    def present_words(self) -> list[str]:
        preferred = [w for w in self.vocab if _present(self.r, w)]
        others = [w for w in content_words(self.r) if w not in preferred]
        self.rng.shuffle(preferred)
        self.rng.shuffle(others)
        return preferred + others

    def of_type(self, iid: str, current: Optional[C.Constraint] = None) -> list[C.Constraint]:
        """Constraints of type `iid` the response should fail, closest to `current` first."""
        r, rng = self.r, self.rng
        kw = current.kwargs if current else {}
        mk = lambda **k: C.Constraint(iid, C.clean_kwargs(k))  # noqa: E731
        if iid == C.KEYWORDS_EXISTENCE:
            absent = self.absent_words()[:3]
            old = list(kw.get("keywords", []))
            if old:
                i = rng.randrange(len(old))
                return [mk(keywords=old[:i] + [w] + old[i + 1:]) for w in absent if w not in old]
            return [mk(keywords=[w]) for w in absent]
        if iid == C.KEYWORDS_FORBIDDEN:
            present = self.present_words()[:3]
            old = list(kw.get("forbidden_words", []))
            if old:
                i = rng.randrange(len(old))
                return [mk(forbidden_words=sorted(set(old[:i] + [w] + old[i + 1:]))) for w in present]
            return [mk(forbidden_words=[w]) for w in present]
        if iid == C.KEYWORDS_FREQUENCY:
            words = [kw["keyword"]] if kw else self.present_words()[:2] + self.absent_words()[:1]
            out = []
            for w in words:
                n = keyword_count(r, w)
                out += [mk(keyword=w, relation=rel, frequency=v)
                        for rel, v in self.relational(iid, n, kw.get("relation"), kw.get("frequency"))]
            return out
        if iid == C.LETTER_FREQUENCY:
            letters = [kw["letter"]] if kw else [rng.choice(C.COMMON_LETTERS), rng.choice(C.RARE_LETTERS)]
            out = []
            for ch in letters:
                n = r.lower().count(ch)
                out += [mk(letter=ch, let_relation=rel, let_frequency=v)
                        for rel, v in self.relational(iid, n, kw.get("let_relation"), kw.get("let_frequency"))]
            return out
        if iid == C.NUMBER_WORDS:
            return [mk(num_words=v, relation=rel)
                    for rel, v in self.relational(iid, self.words(), kw.get("relation"), kw.get("num_words"), 10)]
        if iid == C.NUMBER_SENTENCES:
            return [mk(num_sentences=v, relation=rel) for rel, v in
                    self.relational(iid, self.sentences(), kw.get("relation"), kw.get("num_sentences"))]
        if iid == C.NUMBER_PARAGRAPHS:
            return [mk(num_paragraphs=v) for v in self.exact(iid, count_paragraphs(r), kw.get("num_paragraphs"))]
        if iid == C.BULLETS:
            return [mk(num_bullets=v) for v in self.exact(iid, count_bullets(r), kw.get("num_bullets"))]
        if iid == C.HIGHLIGHTS:
            return [mk(num_highlights=v) for v in self.at_least_more(iid, count_highlights(r))]
        if iid == C.PLACEHOLDERS:
            return [mk(num_placeholders=v) for v in self.at_least_more(iid, count_placeholders(r))]
        if iid == C.SECTIONS:
            out = []
            splitters = list(catalog.SECTION_SPLITTERS)
            if kw:
                # The same count under the other marker: IFEval's section marker is case-sensitive.
                other = [s for s in splitters if s != kw["section_spliter"]]
                out += [mk(section_spliter=s, num_sections=kw["num_sections"]) for s in other]
                splitters = [kw["section_spliter"]]
            for sp in splitters:
                out += [mk(section_spliter=sp, num_sections=v) for v in self.at_least_more(iid, count_sections(r, sp))]
            rng.shuffle(out)
            return out
        if iid == C.CAPITAL_WORDS:
            return [mk(capital_frequency=v, capital_relation=rel) for rel, v in
                    self.relational(iid, self.capitals(), kw.get("capital_relation"), kw.get("capital_frequency"))]
        if iid == C.END_CHECKER:
            phrases = [p for p in catalog.END_PHRASES if p != kw.get("end_phrase")]
            rng.shuffle(phrases)
            return [mk(end_phrase=p) for p in phrases[:3]]
        if iid == C.POSTSCRIPT:
            return [mk(postscript_marker=m) for m in catalog.POSTSCRIPT_MARKERS if m != kw.get("postscript_marker")]
        if iid in (C.TITLE, C.JSON_FORMAT, C.QUOTATION, C.LOWERCASE, C.CAPITAL, C.NO_COMMA):
            return [] if current is not None else [mk()]
        raise KeyError(iid)


# Siblings for instructions without arguments: same IFEval group; no_comma (group of one) borrows startend's.
SIBLINGS: dict[str, tuple[str, ...]] = {
    C.LOWERCASE: (C.CAPITAL, C.CAPITAL_WORDS),
    C.CAPITAL: (C.LOWERCASE, C.CAPITAL_WORDS),
    C.TITLE: (C.JSON_FORMAT, C.HIGHLIGHTS, C.BULLETS, C.SECTIONS),
    C.JSON_FORMAT: (C.TITLE, C.BULLETS, C.HIGHLIGHTS, C.SECTIONS),
    C.QUOTATION: (C.END_CHECKER,),
    C.NO_COMMA: (C.QUOTATION, C.END_CHECKER),
}


def failing(cands: Sequence[C.Constraint], response: str) -> Optional[C.Constraint]:
    for c in cands:
        if not c.check(response):
            return c
    return None


def modify(constraints: Sequence[C.Constraint], j: int, p: Perturber) -> Optional[C.Constraint]:
    """A replacement for constraint j that the response fails (checked), or None."""
    cur = constraints[j]
    if cur.iid in SIBLINGS:
        present = {c.iid for i, c in enumerate(constraints) if i != j}
        cands = [c for sib in SIBLINGS[cur.iid] if sib not in present for c in p.of_type(sib)]
    else:
        cands = p.of_type(cur.iid, cur)
    return failing(cands, p.r)


def insert(constraints: Sequence[C.Constraint], iid: str, p: Perturber) -> Optional[C.Constraint]:
    """A new constraint of type `iid` (absent from the set) that the response fails (checked), or None."""
    if any(c.iid == iid for c in constraints):
        return None
    return failing(p.of_type(iid), p.r)
