"""Logging set-up from the config: level, optional file, and credential redaction.

Messages about a run start with ``[run_id]``. As a last line of defence, a filter
masks anything that looks like credentials in a URL (``scheme://user:secret@``)
before a record is written anywhere.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask ``user:password@`` in URLs."""
    return _URL_CREDENTIALS.sub(r"\1***:***@", text)


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
