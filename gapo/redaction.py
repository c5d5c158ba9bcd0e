"""Credentials in URIs never reach a terminal, a log or MLflow.

A tracking URI may carry `user:password@` (`http://user:pw@host/`, also given as `-S tracking.tracking_uri=...`),
and libraries quote the URI they failed to reach in their own messages: MLflow's "API request to http://user:pw@...
failed" warning after its retries, urllib3's connection errors. Three layers remove the `user:password@` part:

- `redact_text(text)`: every `scheme://user:password@` in a string becomes `scheme://` (the form
  `gapo.tracking.backend.redact` gives a single URI); our own messages, MLflow params and tags go through it;
- `redacting_output()`: while a CLI command runs, sys.stdout / sys.stderr, the streams of the logging handlers
  already attached to them (MLflow's own handler) and logging's last-resort handler pass every write through
  `redact_text`, so warnings and log lines of libraries are redacted too (docs/reliability.md, "Security").
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any, Iterator

# scheme://<userinfo>@ : the userinfo runs to the LAST '@' before the end of the authority ('/', '?', '#',
# whitespace or a quote), the way urllib.parse splits it, so a password holding '@' is removed whole.
# `scheme:/user:pw@` too: a URI that went through pathlib (Path("http://u:p@h/x") prints as "http:/u:p@h/x"); with
# one slash only when a ':' (user:password) comes before the '@', so MLflow's `models:/name@alias` stays intact.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{0,30}:(?://|/(?=[^\s/?#'\"<>@]*:)))"
                       r"[^\s/?#'\"<>@]{0,2048}(?:@[^\s/?#'\"<>@]{0,2048})*@")


def redact_text(text: Any) -> Any:
    """`text` with the `user:password@` of every URI removed; non-strings are returned unchanged."""
    if not isinstance(text, str) or "@" not in text or ":/" not in text:
        return text
    return _USERINFO.sub(r"\g<scheme>", text)


class RedactingStream:
    """A text stream proxy whose `write` redacts credentials (everything else goes to the wrapped stream)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        self._stream.write(redact_text(text))
        return len(text) if isinstance(text, str) else 0

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """Formats a record's message once and stores it redacted (for handlers whose stream we cannot wrap)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's business, not ours
            return True
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def redacting_output() -> Iterator[None]:
    """Redact credentials in everything this process writes to stdout / stderr until the block ends."""
    if isinstance(sys.stderr, RedactingStream):  # nested (a stage calling the CLI in-process)
        yield
        return
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(old_out), RedactingStream(old_err)
    patched = []
    handlers = [h for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                if isinstance(logger, logging.Logger) for h in logger.handlers]
    for handler in handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and stream in (old_out, old_err, sys.__stdout__, sys.__stderr__):
            patched.append((handler, stream))
            handler.stream = RedactingStream(stream)
    last = logging.lastResort
    flt = RedactingFilter()
    if last is not None:
        last.addFilter(flt)
    try:
        yield
    finally:
        for handler, stream in patched:
            if isinstance(handler.stream, RedactingStream):
                handler.stream = stream
        if last is not None:
            last.removeFilter(flt)
        if isinstance(sys.stdout, RedactingStream):
            sys.stdout = old_out
        if isinstance(sys.stderr, RedactingStream):
            sys.stderr = old_err
