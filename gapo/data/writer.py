"""The rule-based reference writer: a product plus a constraint set in, a fluent description out.

Constraints are first turned into a `Plan` (title or not, wrapper, case, bullet/highlight/placeholder counts,
block layout, word/sentence/letter/keyword/capital bounds, words to include or avoid). The writer then builds
candidate sentences ("units": opener, one per attribute, benefits, use case, brand, closing, plus units that
carry required keywords, placeholders or repeated keywords), picks template variants that pass the plan's
filters, lays the units out and grows or shrinks the selection until the measured counts (IFEval's own
`count_words` / `count_sentences`) fit. The caller verifies the result with the checkers; the writer never
claims success on its own.

Every random choice uses an RNG keyed by (seed, decision), not one shared stream. So `plan_breaking` (one
constraint negated, for preferential-response rejects) rewrites the same text except where the broken
constraint forces a change: the chosen and rejected responses differ in the constraint, not in everything.
"""
from __future__ import annotations

import json
import math
import random
import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from gapo.data import catalog
from gapo.data import constraints as C
from gapo.data.corpus import Product, seeded_rng
from gapo.data.ifeval_checkers import util

INF = math.inf
_STRIDES = (1, 3, 5, 7, 11, 13, 17, 19, 23)
PLURAL_NOUNS = frozenset({"Headphones", "Earbuds", "Sunglasses", "Shades", "Frames", "Jeans", "Trousers", "Chinos"})


# -- plan --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    title: bool = False
    wrap: str = "none"            # none | quote | json
    case: str = "normal"          # normal | lower | upper
    commas: str = "allow"         # allow | forbid | require
    end_phrase: Optional[str] = None
    avoid_end: Optional[str] = None
    postscript: Optional[str] = None
    placeholders: int = 0
    highlights: int = 0
    bullets: int = 0
    paragraphs: int = 0           # 0 = free layout; n >= 1 = exactly n blocks divided by ***
    sections: Optional[tuple[str, int]] = None
    words: tuple[float, float] = (0, INF)      # lo <= count < hi
    sentences: tuple[float, float] = (0, INF)
    capitals: tuple[float, float] = (0, INF)
    include: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    word_counts: dict = field(default_factory=dict)   # keyword -> (lo, hi)
    letters: dict = field(default_factory=dict)       # letter -> (lo, hi)


def _bound(relation: str, n: int) -> tuple[float, float]:
    return (0, n) if relation == "less than" else (n, INF)


def _flip(relation: str, n: int) -> tuple[float, float]:
    return (n, INF) if relation == "less than" else (0, n)


def _meet(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return max(a[0], b[0]), min(a[1], b[1])


def apply_constraint(plan: Plan, c: C.Constraint) -> None:
    k = c.kwargs
    if c.iid == C.KEYWORDS_EXISTENCE:
        plan.include += tuple(k["keywords"])
    elif c.iid == C.KEYWORDS_FORBIDDEN:
        plan.avoid += tuple(k["forbidden_words"])
    elif c.iid == C.KEYWORDS_FREQUENCY:
        plan.word_counts[k["keyword"]] = _meet(plan.word_counts.get(k["keyword"], (0, INF)),
                                               _bound(k["relation"], k["frequency"]))
    elif c.iid == C.LETTER_FREQUENCY:
        plan.letters[k["letter"]] = _meet(plan.letters.get(k["letter"], (0, INF)),
                                          _bound(k["let_relation"], k["let_frequency"]))
    elif c.iid == C.NUMBER_WORDS:
        plan.words = _meet(plan.words, _bound(k["relation"], k["num_words"]))
    elif c.iid == C.NUMBER_SENTENCES:
        plan.sentences = _meet(plan.sentences, _bound(k["relation"], k["num_sentences"]))
    elif c.iid == C.NUMBER_PARAGRAPHS:
        plan.paragraphs = k["num_paragraphs"]
    elif c.iid == C.BULLETS:
        plan.bullets = k["num_bullets"]
    elif c.iid == C.TITLE:
        plan.title = True
    elif c.iid == C.JSON_FORMAT:
        plan.wrap = "json"
    elif c.iid == C.HIGHLIGHTS:
        plan.highlights = k["num_highlights"]
    elif c.iid == C.SECTIONS:
        plan.sections = (k["section_spliter"], k["num_sections"])
    elif c.iid == C.LOWERCASE:
        plan.case = "lower"
    elif c.iid == C.CAPITAL:
        plan.case = "upper"
    elif c.iid == C.CAPITAL_WORDS:
        plan.capitals = _meet(plan.capitals, _bound(k["capital_relation"], k["capital_frequency"]))
    elif c.iid == C.END_CHECKER:
        plan.end_phrase = k["end_phrase"]
    elif c.iid == C.QUOTATION:
        plan.wrap = "quote"
    elif c.iid == C.POSTSCRIPT:
        plan.postscript = k["postscript_marker"]
    elif c.iid == C.PLACEHOLDERS:
        plan.placeholders = k["num_placeholders"]
    elif c.iid == C.NO_COMMA:
        plan.commas = "forbid"
    else:
        raise KeyError(c.iid)


def negate_constraint(plan: Plan, c: C.Constraint, rng: random.Random) -> None:
    """Change `plan` so that a text following it fails `c` (used for preferential-response rejects)."""
    k = c.kwargs
    if c.iid == C.KEYWORDS_EXISTENCE:
        plan.avoid += (rng.choice(k["keywords"]),)
    elif c.iid == C.KEYWORDS_FORBIDDEN:
        plan.include += (rng.choice(k["forbidden_words"]),)
    elif c.iid == C.KEYWORDS_FREQUENCY:
        plan.word_counts[k["keyword"]] = _flip(k["relation"], k["frequency"])
    elif c.iid == C.LETTER_FREQUENCY:
        plan.letters[k["letter"]] = _flip(k["let_relation"], k["let_frequency"])
    elif c.iid == C.NUMBER_WORDS:
        plan.words = _flip(k["relation"], k["num_words"])
    elif c.iid == C.NUMBER_SENTENCES:
        plan.sentences = _flip(k["relation"], k["num_sentences"])
    elif c.iid == C.NUMBER_PARAGRAPHS:
        n = k["num_paragraphs"]
        plan.paragraphs = n + 1 if n <= 1 or rng.random() < 0.5 else n - 1
    elif c.iid == C.BULLETS:
        n = k["num_bullets"]
        plan.bullets = n + 1 if rng.random() < 0.5 else n - 1
    elif c.iid == C.TITLE:
        plan.title = False
    elif c.iid in (C.JSON_FORMAT, C.QUOTATION):
        plan.wrap = "none"
    elif c.iid == C.HIGHLIGHTS:
        plan.highlights = k["num_highlights"] - 1
    elif c.iid == C.SECTIONS:
        n = k["num_sections"] - 1
        plan.sections = (k["section_spliter"], n) if n >= 1 else None
    elif c.iid in (C.LOWERCASE, C.CAPITAL):
        plan.case = "normal"
    elif c.iid == C.CAPITAL_WORDS:
        plan.capitals = _flip(k["capital_relation"], k["capital_frequency"])
    elif c.iid == C.END_CHECKER:
        plan.end_phrase, plan.avoid_end = None, k["end_phrase"]
    elif c.iid == C.POSTSCRIPT:
        plan.postscript = None
    elif c.iid == C.PLACEHOLDERS:
        plan.placeholders = k["num_placeholders"] - 1
    elif c.iid == C.NO_COMMA:
        plan.commas = "require"
    else:
        raise KeyError(c.iid)


def plan_for(constraints: Sequence[C.Constraint]) -> Plan:
    plan = Plan()
    for c in constraints:
        apply_constraint(plan, c)
    return plan


def plan_breaking(constraints: Sequence[C.Constraint], j: int, rng: random.Random) -> Plan:
    """The plan of `constraints` with constraint j negated and the others kept."""
    plan = plan_for([c for i, c in enumerate(constraints) if i != j])
    negate_constraint(plan, constraints[j], rng)
    return plan


# -- text helpers ------------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"\w+")


def count_words(text: str) -> int:
    # Same tokenisation as IFEval's count_words (nltk RegexpTokenizer(r"\w+")), without the object per call.
    return len(_WORD_RE.findall(text))


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# "an" before a vowel and before numbers read with one: 8, 80-89, 800.., 11, 18, 11000.., 18000..
_ARTICLE_RE = re.compile(r"\b([Aa]) (?=[aeiou]|8|1[18](?!\d)|1[18]\d{3}(?!\d))")


def fix_articles(text: str) -> str:
    # Catalogue phrases say "a {v}"; a value starting with a vowel needs "an".
    return _ARTICLE_RE.sub(r"\1n ", text)


def cap_first(s: str) -> str:
    return s[:1].upper() + s[1:]


_TOKEN_RE = re.compile(r"[^\s\"'()\[\]<>*,;:!?]+")


def approx_capital_words(text: str) -> int:
    """Words in capitals, as IFEval's capital_word_frequency counts them (nltk.word_tokenize + isupper), but
    ~50x cheaper: whitespace/punctuation tokens with a final period dropped. The writer steers by it; the
    IFEval checker has the last word."""
    n = 0
    for tok in _TOKEN_RE.findall(text):
        tok = tok.rstrip(".")
        if tok and tok.isupper():
            n += 1
    return n


def keyword_count(text: str, keyword: str) -> int:
    # IFEval's frequency checker counts regex matches anywhere (also inside longer words), case-insensitively.
    return len(re.findall(keyword, text, flags=re.IGNORECASE))


# -- units -------------------------------------------------------------------------------------------------
RANK = {"opener": 0, "keyword": 1, "attribute": 2, "benefit": 3, "use": 4, "booster": 5, "brand": 6,
        "extra": 6, "closing": 7, "placeholder": 8}


@dataclass
class Variant:
    text: str
    spans: tuple[str, ...] = ()          # phrases a highlight may wrap
    subject: str = ""                    # attribute units: subject and verb phrase, for merging two facts
    vp: str = ""

    def fixed(self) -> "Variant":
        # Articles are fixed only on the variant actually used: units are built with ~100 variants each.
        return Variant(fix_articles(self.text), self.spans, self.subject, fix_articles(self.vp))


@dataclass
class Unit:
    uid: str
    kind: str
    variants: list[Variant]
    mandatory: bool = False
    chosen: Optional[Variant] = None

    @property
    def rank(self) -> int:
        return RANK[self.kind]


class Writer:
    def __init__(self, product: Product, plan: Plan, seed: str, max_words: int = 110):
        self.max_words = max_words
        self.p = product
        self.plan = plan
        self.seed = seed
        self.plural = product.noun in PLURAL_NOUNS
        self.noun = "pair" if self.plural else product.noun_lower
        self.avoid_re = [re.compile(r"\b" + re.escape(w) + r"\b", re.IGNORECASE) for w in plan.avoid]
        self.capped_words = {w: hi for w, (lo, hi) in plan.word_counts.items() if hi < INF}
        self.capped_letters = {ch: hi for ch, (lo, hi) in plan.letters.items() if hi < INF}

    def rng(self, *tag: object) -> random.Random:
        return seeded_rng(self.seed, *tag)

    # ---- filters -------------------------------------------------------------------------------------------
    def allowed(self, text: str) -> bool:
        if self.plan.commas == "forbid" and "," in text:
            return False
        if any(r.search(text) for r in self.avoid_re):
            return False
        low = text.lower()
        # A unit alone must leave room under every cap; the measured total is checked after layout.
        if any(low.count(ch) >= hi for ch, hi in self.capped_letters.items()):
            return False
        if any(keyword_count(text, w) >= hi for w, hi in self.capped_words.items()):
            return False
        return True

    def choose(self, unit: Unit) -> Optional[Variant]:
        # A keyed start and stride walk the variants in a seeded order without a Random per unit (this runs
        # ~20 times per description and dominated the writer's time).
        n = len(unit.variants)
        h = zlib.crc32(f"{self.seed}:variant:{unit.uid}".encode())
        start, stride = h % n, _STRIDES[(h >> 16) % len(_STRIDES)]
        while n > 1 and math.gcd(stride, n) != 1:
            stride += 1
        order = [unit.variants[(start + k * stride) % n] for k in range(n)]
        # Variants that add nothing to a capped letter or keyword come first, so a cap rarely needs a retry.
        if self.capped_letters or self.capped_words:
            order.sort(key=lambda v: sum(v.text.lower().count(ch) for ch in self.capped_letters)
                       + sum(keyword_count(v.text, w) for w in self.capped_words))
        for v in order:
            if self.allowed(v.text):
                return v.fixed()
        return None

    # ---- vocabulary ----------------------------------------------------------------------------------------
    def adjectives(self, tag: str) -> list[str]:
        words = list(self.p.spec.adjectives) + list(catalog.MARKETING_WORDS[:6])
        words = [w for w in words if self.allowed(w) and w not in self.capped_words]
        self.rng("adj", tag).shuffle(words)
        return words

    def subjects(self) -> list[str]:
        # "It" twice: pronouns carry most sentences in real copy.
        if self.plural:
            return ["It", "It", "This pair", "The pair"]
        return ["It", "It", f"The {self.noun}", f"This {self.noun}"]

    def np(self, adj: str) -> str:
        if self.plural:
            return f"{article(adj)} {adj} pair of {self.p.noun_lower}"
        return f"{article(adj)} {adj} {self.noun}"

    # ---- unit builders -------------------------------------------------------------------------------------
    def opener(self) -> Unit:
        p, variants = self.p, []
        for adj in self.adjectives("opener")[:3]:
            np, use, name = self.np(adj), p.use, p.name
            texts = [
                f"Meet the {name}, {np} for {use}.",
                f"The {name} is {np} made for {use}.",
                f"Looking for {np}? The {name} is built for {use}.",
                f"Built for {use}, the {name} is {np} from {p.brand}.",
                f"Say hello to the {name}, {np} that makes {use} easy.",
                f"The {name} brings {adj} style to {use}.",
                f"Discover the {name}: {np} designed for {use}.",
                f"With the {name} you get {np} ready for {use}.",
            ]
            variants += [Variant(t, spans=(adj, use)) for t in texts]
        if self.plan.commas == "require":
            variants = [v for v in variants if "," in v.text] or variants
        return Unit("opener", "opener", variants, mandatory=True)

    def attribute_units(self, skip: set[str]) -> list[Unit]:
        units = []
        for name, value in self.p.attributes:
            if name in skip:
                continue
            variants = []
            for vp_t in self.p.phrases(name):
                vp = vp_t.format(v=value)
                for subj in self.subjects():
                    variants.append(Variant(f"{subj} {vp}.", spans=(value,), subject=subj, vp=vp))
            units.append(Unit(f"attr:{name}", "attribute", variants))
        return units

    def benefit_units(self) -> list[Unit]:
        """Up to four sentences about how the product feels; each unit has its own two templates, so two
        benefit sentences never share a frame."""
        adjs = self.adjectives("benefit")
        units = []
        for i in range(min((len(adjs) - 1) // 2, 4)):
            a, b = adjs[2 * i], adjs[2 * i + 1]
            frames = [
                f"{self.subjects()[2]} feels {a} and {b}.", f"Expect {self.np(a)} that keeps up with you.",
                f"Everything about it is {a}.", f"Owners love how {a} and {b} it is.",
                f"It stays {a} day after day.", f"You will notice how {a} it feels.",
                f"It is {a} where it matters and {b} everywhere else.", f"Reviewers keep calling it {a}.",
            ]
            units.append(Unit(f"benefit:{i}", "benefit", [Variant(t, spans=(a,)) for t in frames[2 * i:2 * i + 2]]))
        return units

    def keyword_units(self) -> list[Unit]:
        """Sentences carrying the words the prompt requires; two words share a sentence."""
        units = []
        words = list(self.plan.include)
        for i in range(0, len(words), 2):
            pair = words[i:i + 2]
            if len(pair) == 1:
                kw = pair[0]
                texts = [f"It is {kw} through and through.", f"Everything about it feels {kw}.",
                         f"Owners describe it as {kw}.", f"Expect {self.np(kw)} every single day.",
                         f"The design is {kw} in every detail."]
            else:
                a, b = pair
                texts = [f"It is {a} and {b} through and through.", f"Everything about it feels {a} and {b}.",
                         f"Owners describe it as {a} and {b}.", f"Expect {self.np(a)} that is also {b}.",
                         f"The design is {a} and {b} in every detail."]
            units.append(Unit("kw:" + "+".join(pair), "keyword", [Variant(t, spans=tuple(pair)) for t in texts],
                              mandatory=True))
        return units

    def booster_units(self) -> list[Unit]:
        """Extra sentences for keywords that must appear at least N times."""
        units = []
        for kw, (lo, hi) in sorted(self.plan.word_counts.items()):
            if lo <= 0:
                continue
            if kw == self.p.brand:
                texts = [f"{kw} stands behind it.", f"That is the {kw} promise.", f"Ask any {kw} fan.",
                         f"{kw} tests every piece before it ships.", f"{kw} support is always a message away."]
            elif kw == self.p.noun_lower and self.plural:
                texts = [f"This pair of {kw} is built to last.", f"Your new {kw} are ready.",
                         f"These {kw} are easy to love.", f"Every pair of {kw} is checked by hand.",
                         f"Once you try these {kw} you will not go back."]
            elif kw == self.p.noun_lower:
                texts = [f"This {kw} is built to last.", f"Your new {kw} is ready.",
                         f"The {kw} is easy to love.", f"Every {kw} is checked by hand.",
                         f"Once you try this {kw} you will not go back."]
            else:
                texts = [f"It is {kw} through and through.", f"It feels {kw} every time.",
                         f"Simply put it is {kw}.", f"Owners call it {kw}.", f"The finish is {kw} too."]
            for i, t in enumerate(texts[:min(int(lo) + 1, len(texts))]):
                units.append(Unit(f"boost:{kw}:{i}", "booster", [Variant(t, spans=(kw,))]))
        return units

    def use_unit(self) -> Unit:
        u = self.p.use
        texts = [f"It is a smart pick for {u}.", f"Take it along for {u}.", f"Use it for {u} and much more.",
                 f"It was designed with {u} in mind.", f"It is made for {u}."]
        return Unit("use", "use", [Variant(t, spans=(u,)) for t in texts])

    def brand_unit(self) -> Unit:
        b = self.p.brand
        texts = [f"{b} designs every {self.noun} to last.", f"Every {b} product is tested before it ships.",
                 f"{b} backs it with friendly support.", f"{b} has made {self.p.category} for years."]
        return Unit("brand", "brand", [Variant(t) for t in texts])

    def extra_units(self) -> list[Unit]:
        """Generic filler the writer reaches for when a length constraint wants more words."""
        u, b = self.p.use, self.p.brand
        texts = [
            ("care", ["It is easy to clean and simple to store.", "Care is simple and quick."]),
            ("tested", [f"Every detail has been tested during real {u}.", f"It has been tried and tested on {u}."]),
            ("checked", ["Each one is checked by hand before it leaves the workshop.",
                         "Each piece passes a final check before it ships."]),
            ("delivery", ["Delivery is fast and returns are free.", "It ships quickly and returns are easy."]),
            ("range", [f"It pairs well with the rest of the {b} range.", f"It sits well next to other {b} pieces."]),
            ("loyal", ["Customers keep coming back for good reason.", "Many buyers come back for a second one."]),
        ]
        return [Unit(f"extra:{tag}", "extra", [Variant(t) for t in options]) for tag, options in texts]

    def closing_unit(self) -> Unit:
        texts = ["Add it to your cart today.", "It also makes a thoughtful gift.", "Treat yourself to one today.",
                 "Give it a try and feel the difference.", "Order now and enjoy it for years."]
        return Unit("closing", "closing", [Variant(t) for t in texts])

    def placeholder_unit(self, n: int) -> Optional[Unit]:
        if n <= 0:
            return None
        variants = []
        for attempt in range(4):
            clauses = list(catalog.PLACEHOLDER_CLAUSES)
            self.rng("placeholders", attempt).shuffle(clauses)
            clauses = clauses[:n]
            sentences = [" and ".join(clauses[i:i + 2]) for i in range(0, n, 2)]
            variants.append(Variant(" ".join(cap_first(s) + "." for s in sentences)))
        return Unit("placeholder", "placeholder", variants, mandatory=True)

    def bullet_items(self) -> list[str]:
        items = [f"{name}: {value}" for name, value in self.p.attributes]
        items += [f"Good for: {self.p.use}", f"Brand: {self.p.brand}"]
        return [i for i in items if self.allowed(i)]

    # ---- layout -------------------------------------------------------------------------------------------
    def render_units(self, units: list[Unit], merges: set[str], highlight: int) -> list[str]:
        """Texts of the chosen units in order; merged attribute pairs become one sentence."""
        ordered = sorted(units, key=lambda u: (u.rank, u.uid))
        texts, spans_used = [], 0
        i = 0
        while i < len(ordered):
            u = ordered[i]
            v = u.chosen
            if u.kind == "attribute" and u.uid in merges and i + 1 < len(ordered) \
                    and ordered[i + 1].kind == "attribute":
                w = ordered[i + 1].chosen
                text = f"{v.subject} {v.vp} and {w.vp}."
                spans = v.spans + w.spans
                i += 2
            else:
                text, spans = v.text, v.spans
                i += 1
            if spans_used < highlight:
                for s in spans:
                    if spans_used >= highlight:
                        break
                    found = re.search(r"\b" + re.escape(s) + r"\b", text)
                    pos = found.start() if found else -1
                    if pos > 0 and "*" not in text[pos - 1:pos + len(s) + 1]:
                        text = text[:pos] + f"*{s}*" + text[pos + len(s):]
                        spans_used += 1
            texts.append(text)
        if spans_used < highlight:
            return []
        return texts

    def compose(self, units: list[Unit], merges: set[str], bullets: list[str], capital_boost: int) -> str:
        plan, rng = self.plan, self.rng("layout")
        texts = self.render_units(units, merges, plan.highlights if plan.wrap != "json" else 0)
        if not texts:
            return ""
        if capital_boost:
            texts = self.shout(texts, capital_boost)
        if plan.wrap == "json":
            return self.compose_json(texts, rng)
        if plan.sections:
            k = plan.sections[1]
        elif plan.paragraphs:
            k = plan.paragraphs
        else:
            k = 2 if len(texts) >= 5 and rng.random() < 0.5 else 1
        if len(texts) < k:
            return ""
        # Contiguous blocks, as even as possible, the opener always in block 0.
        bounds = [round(i * len(texts) / k) for i in range(k + 1)]
        parts = [texts[bounds[i]:bounds[i + 1]] for i in range(k)]
        blocks = [" ".join(part) for part in parts]
        if bullets:
            # The list follows the first sentence of its block, where a copywriter would put it.
            b = 0 if k == 1 else rng.randrange(k)
            intro = rng.choice(("Key features:", "At a glance:", "Highlights:", ""))
            intro = intro if intro and self.allowed(intro) else ""
            lines = ([intro] if intro else []) + [f"* {item}" for item in bullets]
            head, rest = parts[b][0], " ".join(parts[b][1:])
            blocks[b] = head + "\n" + "\n".join(lines) + ("\n" + rest if rest else "")
        tail = []
        if plan.postscript:
            lines = [x for x in catalog.POSTSCRIPT_LINES if self.allowed(x)]
            if not lines:
                return ""
            tail.append(f"{plan.postscript} {self.rng('ps').choice(lines)}")
        if tail:
            blocks[-1] = blocks[-1] + "\n\n" + "\n".join(tail)
        if plan.end_phrase:
            blocks[-1] = blocks[-1] + " " + plan.end_phrase
        if plan.sections:
            sp = plan.sections[0]
            body = "\n\n".join(f"{sp} {i + 1}\n{b}" for i, b in enumerate(blocks))
        elif plan.paragraphs:
            body = "\n***\n".join(blocks)
        else:
            body = "\n\n".join(blocks)
        if plan.title:
            body = self.title() + "\n" + body
        if plan.wrap == "quote":
            body = f'"{body}"'
        return self.recase(body)

    def compose_json(self, texts: list[str], rng: random.Random) -> str:
        obj = {"product": self.p.name, "description": " ".join(texts)}
        if rng.random() < 0.5:
            obj["features"] = [f"{n}: {v}" for n, v in self.p.attributes if self.allowed(f"{n}: {v}")][:4]
        text = json.dumps(obj, indent=2, ensure_ascii=False)
        if rng.random() < 0.5:
            text = f"```json\n{text}\n```"
        return self.recase(text)

    def recase(self, text: str) -> str:
        if self.plan.case == "lower":
            return text.lower()
        if self.plan.case == "upper":
            return text.upper()
        return text

    def title(self) -> str:
        p, adj = self.p, (self.adjectives("title") or ["new"])[0]
        options = [p.name, f"The {p.name}", f"{cap_first(adj)} {p.noun} for {p.use.title()}",
                   f"Introducing the {p.name}"]
        options = [o for o in options if self.allowed(o)] or [p.name]
        return f"<<{self.rng('title').choice(options)}>>"

    def shout(self, texts: list[str], n: int) -> list[str]:
        """Upper-case n words (for 'capital words at least N'), never placeholders or the first word."""
        rng = self.rng("shout")
        # Emphasis on selling words reads naturally ("a DURABLE pack"); other words only when those run out.
        favoured = {w.lower() for w in self.p.spec.adjectives + catalog.MARKETING_WORDS} | {"new", "free"}
        slots = []
        for i, t in enumerate(texts):
            for m in re.finditer(r"(?<![\[\w*])[a-z]{3,}(?![\w\]])", t):
                if m.start() > 0:
                    slots.append((m.group(0) not in favoured, rng.random(), i, m.start(), m.end()))
        slots.sort()
        chosen = sorted((s[2:] for s in slots[:n]), key=lambda s: (s[0], -s[1]))
        out = list(texts)
        for i, a, b in chosen:
            out[i] = out[i][:a] + out[i][a:b].upper() + out[i][b:]
        return out

    # ---- measuring -----------------------------------------------------------------------------------------
    def measure(self, text: str) -> dict:
        m = {"words": count_words(text)}
        if self.plan.sentences != (0, INF):
            m["sentences"] = util().count_sentences(text)
        if self.plan.capitals != (0, INF):
            m["capitals"] = approx_capital_words(text)
        low = text.lower()
        m["letters"] = {ch: low.count(ch) for ch in self.plan.letters}
        m["keywords"] = {w: keyword_count(text, w) for w in self.plan.word_counts}
        return m

    def needs(self, m: dict) -> tuple[list[str], bool]:
        """(what is below its lower bound, whether anything is at or above its upper bound)."""
        plan, low, high = self.plan, [], False
        checks = [("words", m["words"], plan.words)]
        if "sentences" in m:
            checks.append(("sentences", m["sentences"], plan.sentences))
        if "capitals" in m:
            checks.append(("capitals", m["capitals"], plan.capitals))
        checks += [(f"letter:{ch}", m["letters"][ch], b) for ch, b in plan.letters.items()]
        checks += [(f"keyword:{w}", m["keywords"][w], b) for w, b in plan.word_counts.items()]
        for name, value, (lo, hi) in checks:
            if value < lo:
                low.append(name)
            if value >= hi:
                high = True
        return low, high

    # ---- main --------------------------------------------------------------------------------------------
    def write(self) -> Optional[str]:
        plan = self.plan
        bullets: list[str] = []
        skip: set[str] = set()
        if plan.bullets > 0:
            items = self.bullet_items()
            if len(items) < plan.bullets:
                return None
            bullets = items[:plan.bullets]
            skip = {b.split(":", 1)[0] for b in bullets}
        mandatory = [self.opener()] + self.keyword_units()
        ph = self.placeholder_unit(plan.placeholders)
        if ph:
            mandatory.append(ph)
        attrs = self.attribute_units(skip)
        rest = [self.use_unit()] + self.benefit_units() + [self.brand_unit(), self.closing_unit()]
        # Facts first, then the rest in a seeded order, generic filler last: the description grows the way a
        # copywriter's would.
        self.rng("order").shuffle(rest)
        rest += self.extra_units()
        boosters = self.booster_units()
        for u in mandatory + attrs + rest + boosters:
            u.chosen = self.choose(u)
        if any(u.chosen is None for u in mandatory):
            return None
        remaining = [u for u in attrs + rest if u.chosen is not None]
        reserve = {}  # keyword -> its booster units, used only while that keyword is short
        for u in boosters:
            if u.chosen is not None:
                reserve.setdefault(u.uid.split(":")[1], []).append(u)

        lo, hi = plan.words
        # Target length: within the plan's word bounds, 40..max_words words when the bounds allow (max_words
        # keeps long prompts plus their answers inside the small policy's context).
        hi_eff, lo_eff = min(hi - 1, 150), max(lo, 30)
        if lo_eff > hi_eff:
            lo_eff = lo
        top = max(min(hi_eff, self.max_words), lo_eff)
        target = self.rng("target").randint(int(min(max(lo_eff, 40), hi_eff, top)), int(top))
        merge_rng = self.rng("merge")
        merges = {u.uid for u in remaining if u.kind == "attribute" and merge_rng.random() < 0.3}
        capital_boost = 0
        min_units = max(plan.sections[1] if plan.sections else 0, plan.paragraphs)

        selected = list(mandatory)
        # Grow to the target length by the cheap estimate first; measured counts fine-tune below.
        est = sum(count_words(u.chosen.text) for u in selected) + 4 * len(bullets)
        while remaining and (est < target or len(selected) < min_units):
            u = remaining.pop(0)
            selected.append(u)
            est += count_words(u.chosen.text)

        def unmerged() -> list[str]:
            return [u.uid for u in selected if u.kind == "attribute" and u.uid not in merges]

        best = None   # the last text that met every bound, kept while trimming towards max_words
        for _ in range(30):
            text = self.compose(selected, merges, bullets, capital_boost)
            if not text:
                if best is not None or not remaining:
                    return best
                selected.append(remaining.pop(0))
                continue
            m = self.measure(text)
            low, high = self.needs(m)
            if not low and not high:
                best = text
                # Boosters, JSON keys and structure come on top of the target: drop filler while the text is
                # over budget and still meets every bound.
                filler = [u for u in selected if not u.mandatory and u.kind not in ("booster", "attribute")]
                if m["words"] > self.max_words + 10 and filler and len(selected) > max(min_units, 1) + 1:
                    selected.remove(filler[-1])
                    continue
                return text
            if best is not None:
                return best
            if "capitals" in low:
                capital_boost += int(plan.capitals[0] - m["capitals"])
                continue
            short_kw = [n.split(":", 1)[1] for n in low if n.startswith("keyword:") and reserve.get(n.split(":", 1)[1])]
            if short_kw:
                selected.append(reserve[short_kw[0]].pop(0))
                continue
            if low and high:
                # Typically too many sentences for the words needed: fewer, longer sentences.
                if unmerged() and "sentences" in m and m["sentences"] >= plan.sentences[1]:
                    merges.add(unmerged()[0])
                    continue
                return None
            if low:
                if not remaining:
                    return None
                selected.append(remaining.pop(0))
                continue
            if "sentences" in m and m["sentences"] >= plan.sentences[1] and unmerged():
                merges.add(unmerged()[0])
                continue
            removable = [u for u in selected if not u.mandatory]
            if not removable or len(selected) <= max(min_units, 1):
                return None
            victim = removable[-1]
            selected.remove(victim)
            if victim.kind != "booster":
                remaining.insert(0, victim)
        return best


def write_reference(product: Product, constraints: Sequence[C.Constraint], seed: str,
                    max_words: int = 110) -> Optional[str]:
    return Writer(product, plan_for(constraints), seed, max_words).write()


def write_with_plan(product: Product, plan: Plan, seed: str, max_words: int = 110) -> Optional[str]:
    return Writer(product, replace(plan), seed, max_words).write()


# Prompt plus answer should fit ~350 tokens of a 4096-token BPE trained on this corpus. Measured tokens per
# word with such a tokenizer: prompts ~1.5 (up to 1.9), answers ~1.3, JSON ~1.45, all-capitals ~1.9 (capitalised
# words are rare, so they split into more pieces). The answer's default length is sized from that; a length
# constraint asking for more still wins.
PAIR_TOKEN_BUDGET = 330
PROMPT_TOKENS_PER_WORD = 1.6
ANSWER_TOKENS_PER_WORD = {"upper": 2.0, "json": 1.5, "other": 1.35}


def max_words_for(prompt: str, constraints: Sequence[C.Constraint]) -> int:
    ids = {c.iid for c in constraints}
    kind = "upper" if C.CAPITAL in ids else "json" if C.JSON_FORMAT in ids else "other"
    room = PAIR_TOKEN_BUDGET - PROMPT_TOKENS_PER_WORD * len(prompt.split())
    return int(max(35, min(110, room / ANSWER_TOKENS_PER_WORD[kind])))
