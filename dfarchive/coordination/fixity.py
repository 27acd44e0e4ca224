"""Fixity audits: when a run's archive is due for a check, what a check records, and
how fast audits may read.

Pure functions and one small rate limiter; the store transition is
:func:`dfarchive.coordination.runstate.record_fixity`, the check itself
:func:`dfarchive.ops.verify.verify_run`.

When a run is due (``fixity_interval_days`` = *I*):

* never checked: at ``base + I * (1 + f)``, where ``base`` is when dfarchive adopted
  the run (``archive.adopted_at``) or archived it (``updated_at`` of the encrypted
  document; a fixity record does not change it), and ``f`` in [0, 1) comes from a hash
  of the run id. Archiving (or adopting) checked the archive once already; spreading the
  first audits over a whole interval keeps 10,000 runs adopted on one day from all
  coming due on the same later day;
* checked before: ``I`` after its last check (so the spread persists).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dfarchive.coordination.runstate import ENCRYPTED, parse_timestamp, timestamp

OK, FAILED, MISSING = "ok", "failed", "missing"
RESULTS = (OK, FAILED, MISSING)
#: Earlier checks a run document keeps in ``fixity_history`` (the last one is ``fixity``).
HISTORY_KEPT = 10
#: Longest ``fixity.reason`` kept.
REASON_CHARS = 2000
MB = 1_000_000

#: ``dfarchive status --fixity`` choices: the last result, or due now.
DUE = "due"
FILTERS = (FAILED, MISSING, DUE)


def spread_fraction(run_id: str) -> float:
    """A fraction in [0, 1), the same for a run id on every host and every run."""
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def auditable(doc: Mapping[str, Any]) -> bool:
    """An encrypted run with an archive record (dfarchive's own, or adopted)."""
    return doc.get("status") == ENCRYPTED and isinstance(doc.get("archive"), Mapping)


def last_check(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fixity = doc.get("fixity")
    return fixity if isinstance(fixity, Mapping) else None


def checked_at(doc: Mapping[str, Any]) -> datetime | None:
    check = last_check(doc)
    return None if check is None else parse_timestamp(check.get("checked_at"))


def base_time(doc: Mapping[str, Any]) -> datetime | None:
    """When the archive was last known good without an audit: adopted or archived."""
    archive = doc.get("archive")
    adopted = parse_timestamp(archive.get("adopted_at")) if isinstance(archive, Mapping) else None
    return (
        adopted or parse_timestamp(doc.get("updated_at")) or parse_timestamp(doc.get("created_at"))
    )


def due_at(doc: Mapping[str, Any], interval: timedelta) -> datetime | None:
    """When the run's next audit is due; None if it can't be audited. A run whose
    times are unreadable is due at once (the epoch)."""
    if not auditable(doc):
        return None
    last = checked_at(doc)
    if last is not None:
        return last + interval
    base = base_time(doc)
    if base is None:
        return datetime.fromtimestamp(0, tz=UTC)
    return base + interval * (1 + spread_fraction(str(doc.get("_id"))))


def due_order(doc: Mapping[str, Any], interval: timedelta) -> float:
    """A sort key: the due time as Unix time (runs that can't be audited last)."""
    when = due_at(doc, interval)
    return float("inf") if when is None else when.timestamp()


def is_due(doc: Mapping[str, Any], now: datetime, interval: timedelta) -> bool:
    when = due_at(doc, interval)
    return when is not None and when <= now


def check_age(doc: Mapping[str, Any], now: datetime) -> timedelta | None:
    """How long ago the archive was last known good: checked, else adopted/archived."""
    if not auditable(doc):
        return None
    since = checked_at(doc) or base_time(doc)
    return None if since is None else max(timedelta(0), now - since)


def result_of(doc: Mapping[str, Any]) -> str | None:
    check = last_check(doc)
    result = check.get("result") if check is not None else None
    return result if result in RESULTS else None


def matches_filter(
    doc: Mapping[str, Any], wanted: str, now: datetime, interval: timedelta | None
) -> bool:
    """``status --fixity``: ``failed``/``missing`` by last result; ``due`` (needs an
    interval: the configured one, else any run never checked)."""
    if wanted == DUE:
        if interval is None:
            return auditable(doc) and last_check(doc) is None
        return is_due(doc, now, interval)
    return result_of(doc) == wanted


@dataclass(frozen=True, kw_only=True)
class Check:
    """One audit's outcome, as recorded in the run document's ``fixity``."""

    checked_at: datetime
    result: str
    reason: str | None
    host: str
    seconds: float
    deep: bool

    def record(self) -> dict[str, Any]:
        return {
            "checked_at": timestamp(self.checked_at),
            "result": self.result,
            "reason": None if self.reason is None else self.reason[:REASON_CHARS],
            "host": self.host,
            "seconds": round(self.seconds, 3),
            "deep": self.deep,
        }


def classify(problems: list[str], *, missing: bool) -> tuple[str, str | None]:
    """(result, reason) of a check that found ``problems``; ``missing``: the archive
    file itself is gone (moved to tape by another tool), not damaged."""
    if missing:
        return MISSING, "; ".join(problems) or "archive missing"
    if problems:
        return FAILED, "; ".join(problems)
    return OK, None


class RateLimiter:
    """A token bucket: :meth:`consume` blocks so that bytes pass at ``rate`` per second
    on average, with bursts of at most ``burst`` seconds' worth. Thread-safe: one
    limiter shared by a process's threads caps the process.

    The bucket starts empty, so a short read is not a free burst; the debt of a large
    read is paid by sleeping after it.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = rate * burst
        self.clock = clock
        self.sleep = sleep
        self._tokens = 0.0
        self._at = clock()
        self._lock = threading.Lock()

    def consume(self, amount: int, sleep: Callable[[float], Any] | None = None) -> None:
        """Take ``amount`` tokens, sleeping (with ``sleep``, e.g. an event's wait, or
        the limiter's) until the debt is paid."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= amount
            debt = -self._tokens
        if debt > 0:
            (sleep or self.sleep)(debt / self.rate)
