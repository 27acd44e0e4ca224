"""The ``dfarchive status`` table: a pure function of run documents and the time.

One line per run: id, sequencer, status, progress, throughput, worker, age (time since
the document last changed), failure count, the last fixity audit's result and age
(``ok/3d``: checked three days ago; ``unchecked``: an encrypted run never audited yet)
and the last error, which is cut to fit the terminal width. Documents are read
defensively: they may be hand-edited or written by older tools, so a missing or
malformed field shows as ``-`` instead of failing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dfarchive.coordination import fixity
from dfarchive.coordination.runstate import (
    ENCRYPTED,
    PROCESSING,
    STATUSES,
    failure_count,
    parse_timestamp,
)

HEADERS = (
    "RUN",
    "SEQUENCER",
    "STATUS",
    "PROGRESS",
    "MB/S",
    "WORKER",
    "AGE",
    "FAILS",
    "FIXITY",
    "LAST ERROR",
)
#: Columns printed right-aligned (numbers).
RIGHT_ALIGNED = frozenset({"PROGRESS", "MB/S", "AGE", "FAILS"})
NONE = "-"
ELLIPSIS = "..."
GAP = "  "
#: The last-error column keeps at least this many characters before whole lines are cut.
MIN_ERROR_WIDTH = 20

Document = Mapping[str, Any]


def _text(value: Any) -> str:
    """A cell: one line, control characters replaced, ``-`` for nothing."""
    if value is None or value == "":
        return NONE
    text = str(value)
    return "".join(c if c.isprintable() else " " if c in "\t\r\n" else "?" for c in text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def progress_percent(doc: Document) -> str:
    """``100%`` for an encrypted run, ``NN.N%`` while processing, else ``-``."""
    status = doc.get("status")
    if status == ENCRYPTED:
        return "100%"
    progress = doc.get("progress")
    if status != PROCESSING or not isinstance(progress, Mapping):
        return NONE
    done, total = _number(progress.get("bytes_done")), _number(progress.get("bytes_total"))
    if done is None or not total or total <= 0:
        return NONE
    return f"{min(100.0, 100.0 * done / total):.1f}%"


def throughput_mb_s(doc: Document) -> str:
    """MB/s (10^6 bytes): ``progress.rate`` while processing; for an encrypted run, its
    plaintext size over the recorded end-to-end seconds."""
    status = doc.get("status")
    rate: float | None = None
    if status == PROCESSING and isinstance(doc.get("progress"), Mapping):
        rate = _number(doc["progress"].get("rate"))
    elif status == ENCRYPTED and isinstance(doc.get("archive"), Mapping):
        size = _number(doc["archive"].get("plaintext_size"))
        seconds = _number(doc["archive"].get("seconds"))
        rate = size / seconds if size is not None and seconds else None
    if rate is None or rate < 0:
        return NONE
    return f"{rate / 1e6:.1f}"


def age(doc: Document, now: datetime) -> str:
    """Time since ``updated_at``: ``45s``, ``12m``, ``3h05m``, ``4d02h``; ``-`` if unknown."""
    updated = parse_timestamp(doc.get("updated_at"))
    if updated is None:
        return NONE
    return _duration(now - updated)


def fixity_cell(doc: Document, now: datetime) -> str:
    """``ok/3d`` (result/time since the check), ``unchecked``, or ``-`` for a run that
    can't be audited (not encrypted, or not adopted yet)."""
    if not fixity.auditable(doc):
        return NONE
    check, checked = fixity.last_check(doc), fixity.checked_at(doc)
    if check is None or checked is None:
        return "unchecked"
    return f"{_text(check.get('result'))}/{_duration(now - checked)}"


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def row(doc: Document, now: datetime, note: str = "") -> tuple[str, ...]:
    """The cells of one document, in :data:`HEADERS` order; ``note`` (something found
    outside the document, e.g. a leftover file) goes before the last error."""
    error = _text(doc.get("last_error")) if doc.get("last_error") else ""
    return (
        _text(doc.get("_id")),
        _text(doc.get("sequencer")),
        _text(doc.get("status")),
        progress_percent(doc),
        throughput_mb_s(doc),
        _text(doc.get("worker_id")),
        age(doc, now),
        str(failure_count(doc)),
        fixity_cell(doc, now),
        "; ".join(text for text in (_text(note) if note else "", error) if text),
    )


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def render_table(
    docs: Iterable[Document],
    now: datetime,
    *,
    width: int | None = None,
    notes: Mapping[str, str] | None = None,
) -> list[str]:
    """The table as lines (header first), without trailing spaces.

    Parameters:
      docs: run documents, shown in the order given.
      now: the current time (UTC-aware), for the age column.
      width: the terminal width; the last-error column is cut to fit it, and if even
        the other columns don't fit, every line is cut. None: nothing is cut.
      notes: by run id, a note shown first in the last column.
    """
    notes = notes or {}
    rows = [row(doc, now, notes.get(str(doc.get("_id")), "")) for doc in docs]
    fixed = len(HEADERS) - 1
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(fixed)]
    lines = []
    for cells in [HEADERS, *rows]:
        parts = [
            cells[i].rjust(widths[i]) if HEADERS[i] in RIGHT_ALIGNED else cells[i].ljust(widths[i])
            for i in range(fixed)
        ]
        left = GAP.join(parts) + GAP
        error = cells[-1]
        if width is not None:
            room = width - len(left)
            if room >= MIN_ERROR_WIDTH:
                error = _cut(error, room)
            else:
                lines.append(_cut(left + error, width).rstrip())
                continue
        lines.append((left + error).rstrip())
    return lines


def summary_line(docs: Sequence[Document]) -> str:
    """``4 runs: 1 pending, 1 processing, 2 encrypted`` (known statuses first)."""
    counts = Counter(
        "without status" if doc.get("status") in (None, "") else _text(doc["status"])
        for doc in docs
    )
    order = [s for s in STATUSES if counts[s]] + sorted(set(counts) - set(STATUSES))
    noun = "run" if len(docs) == 1 else "runs"
    if not docs:
        return "0 runs"
    return f"{len(docs)} {noun}: " + ", ".join(f"{counts[s]} {s}" for s in order)
