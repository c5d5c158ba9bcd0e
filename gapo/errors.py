"""Errors a user can act on. Each message is one line: the source (file, key, stage), the place
(line, field, round, step) and what was expected. The CLI prints it without a traceback."""


class GapoError(Exception):
    """Base class for every user-facing error."""


class DataError(GapoError):
    """Bad input data: names file, line, field and the expectation."""


class ModelError(GapoError):
    """A model path or checkpoint that cannot be used as asked."""


class NumericalError(GapoError):
    """NaN/inf in a loss, reward or advantage: names stage, round and step."""


# A failure caused by what the user gave (a file we cannot read or write, data nested deeper or numbers larger than
# Python handles, text that is not Unicode, an exhausted machine), not by a bug in the code: the CLI prints it as one
# `error:` line and exits 2 like a GapoError (gapo.cli). GAPO_TRACEBACK=1 re-raises it with its traceback.
INPUT_ERRORS = (OSError, RecursionError, UnicodeError, OverflowError, MemoryError)

MAX_MESSAGE_CHARS = 2000


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message as the CLI prints it: its lines joined, credentials in URIs removed, cut to `limit` characters."""
    from gapo.redaction import redact_text

    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    line = redact_text(line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_input_error(exc: BaseException) -> str:
    """The one line for an INPUT_ERRORS exception: the path and the OS's reason, or what about the input was
    too much."""
    if isinstance(exc, OSError):
        name = exc.filename2 if exc.filename2 is not None else exc.filename
        why = exc.strerror or str(exc) or type(exc).__name__
        return f"{name}: {why}" if name is not None else f"{why} ({type(exc).__name__})"
    if isinstance(exc, RecursionError):
        return "input nested too deeply to process (RecursionError); flatten it"
    if isinstance(exc, UnicodeError):
        reason = getattr(exc, "reason", None) or str(exc)
        return f"text that is not valid Unicode ({reason}); lone surrogates and undecodable bytes are refused"
    if isinstance(exc, OverflowError):
        return f"a number too large to handle ({exc})"
    if isinstance(exc, MemoryError):
        return "out of memory (an input far larger than expected?)"
    return f"{type(exc).__name__}: {exc}"
