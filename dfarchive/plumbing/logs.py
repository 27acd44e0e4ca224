"""Logging set-up from the config: level, optional file, and credential redaction.

Messages about a run start with ``[run_id]``. As a last line of defence, everything
logged, and every error a command prints, is redacted before it is written anywhere:
the user info of any URL (``scheme://user:secret@host``) and every secret the
configuration holds (:func:`add_secret`), wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from urllib.parse import quote

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"
MASK = "***"
#: Shorter secrets are not masked on their own: masking every "abc" in the logs would
#: garble them and, by where the masks fall, show the secret anyway.
MIN_SECRET_LENGTH = 4

_SCHEME = re.compile(r"\b[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_HOST_PORT = re.compile(r"(\[[0-9a-f:.]*\]|[^\s:@/?#\[\]]*)(:[0-9]*)?", re.IGNORECASE)
_secrets: set[str] = set()


def add_secret(secret: str | None) -> None:
    """Mask ``secret`` (and its percent-encoded form) wherever it appears from now on."""
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        _secrets.update({secret, quote(secret, safe="")})


def redact(text: str) -> str:
    """``text`` with URL user info and the known secrets masked."""
    text = _mask_url_credentials(text)
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no remnants
        text = text.replace(secret, MASK)
    return text


def _mask_url_credentials(text: str) -> str:
    kept, pos = [], 0
    for match in _SCHEME.finditer(text):
        start = match.end()
        if start < pos:
            continue  # within user info masked already
        at = _userinfo_end(text, start)
        if at is not None:
            kept += [text[pos:start], MASK]
            pos = at
    return "".join([*kept, text[pos:]])


def _userinfo_end(text: str, start: int) -> int | None:
    """Where the user info of the URL whose authority begins at ``start`` ends (its
    ``@``), or None if it has none.

    By the URL rules the user info runs to the last ``@`` of the authority, which ends
    at the first ``/``, ``?`` or ``#``. People write passwords unencoded, though, with
    ``/``, ``@`` or spaces in them: so any ``@`` in the same word ends the user info,
    and if the word's authority is not ``host[:port]`` (``user:pa ss@host``), the last
    ``@`` on the line does.
    """
    line_end = len(text) if (newline := text.find("\n", start)) == -1 else newline
    word = re.match(r"\S*", text[start:line_end])
    word_end = start + (word.end() if word else 0)
    at = text.rfind("@", start, word_end)
    if at != -1:
        return at
    authority = re.split(r"[/?#]", text[start:word_end], maxsplit=1)[0]
    if _HOST_PORT.fullmatch(authority):
        return None
    at = text.rfind("@", start, line_end)
    return at if at != -1 else None


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Log to stderr and, if given, to ``log_file`` (appending)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        # Names from the file system may not be UTF-8 (surrogate escapes): escape them
        # instead of losing the record to a "Logging error".
        handlers.append(logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace"))
    for handler in handlers:
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=handlers, force=True)
    # pika logs every failed connection attempt as several errors with a traceback;
    # dfarchive and dramatiq report the failure themselves, in one line.
    pika_level = logging.DEBUG if logging.getLevelName(level) == logging.DEBUG else logging.CRITICAL
    logging.getLogger("pika").setLevel(pika_level)
    # urllib3 logs each retry of an unreachable server as a warning; the store's own
    # error (one line, after the retries) says it better.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
