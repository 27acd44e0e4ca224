"""Run documents and their transitions, as pure functions.

A run document is a plain dict, exactly as stored in CouchDB (the original
``dataflow_archive`` tool's fields plus additive ones). Every transition takes the
current document and returns a *new* dict, or raises :class:`TransitionRefused` when
the document's state does not allow it. Returning the very same object means "already
in the wanted state, nothing to write" (used to make retried writes idempotent), so
the transitions that can do so take a :data:`RunDocument`, not any mapping.

The stores apply these functions inside a compare-and-swap loop; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from dfarchive.errors import ClaimLost, NotClaimable, TransitionRefused

PENDING = "pending"
PROCESSING = "processing"
ENCRYPTED = "encrypted"
FAILED = "failed"
STATUSES = (PENDING, PROCESSING, ENCRYPTED, FAILED)

#: How many past attempts a document keeps in ``attempts``.
ATTEMPTS_KEPT = 10
#: Longest ``last_error`` kept, so one pathological error can't bloat the document.
ERROR_CHARS = 2000
#: Failures after which a run becomes ``failed`` (``max_attempts``).
DEFAULT_MAX_ATTEMPTS = 3
#: A claim expires this long after its last heartbeat (``lease_seconds``).
DEFAULT_LEASE_SECONDS = 300.0
#: How long a ``processing`` document written by the original tool (no lease) counts
#: as held after its ``updated_at``: a live original worker may be archiving it.
DEFAULT_LEGACY_LEASE_SECONDS = 86400.0
#: Fields every claim dfarchive makes writes (and keeps); the original tool's
#: ``processing`` documents have none of them.
CLAIM_FIELDS = ("claim_token", "lease_expires_at")

RunDocument = dict[str, Any]


def timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with offset, as the original tool writes (``2026-04-28T10:00:00+00:00``)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_timestamp(text: str | None) -> datetime | None:
    """The inverse of :func:`timestamp`; None for a missing or unreadable value."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_run(
    run_id: str, *, path: str, sequencer: str, worker_id: str, now: datetime
) -> RunDocument:
    """A freshly registered, pending run document."""
    stamp = timestamp(now)
    return {
        "_id": run_id,
        "path": path,
        "status": PENDING,
        "worker_id": worker_id,
        "failure_count": 0,
        "created_at": stamp,
        "updated_at": stamp,
        "sequencer": sequencer,
    }


def failure_count(doc: Mapping[str, Any]) -> int:
    """``failure_count`` as an int, tolerating hand-edited documents ("2", null)."""
    value = doc.get("failure_count", 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity (SQLite JSON)
        return 0


def legacy_claim(doc: Mapping[str, Any]) -> bool:
    """A ``processing`` document the original tool wrote: none of dfarchive's claim fields."""
    return doc.get("status") == PROCESSING and not any(key in doc for key in CLAIM_FIELDS)


def lease_end(
    doc: Mapping[str, Any], legacy_lease_seconds: float = DEFAULT_LEGACY_LEASE_SECONDS
) -> datetime | None:
    """When a processing run's claim runs out; None if the document does not say.

    A claim of the original tool has no lease: it is held until ``updated_at`` +
    ``legacy_lease_seconds``.
    """
    if not legacy_claim(doc):
        return parse_timestamp(doc.get("lease_expires_at"))
    updated = parse_timestamp(doc.get("updated_at"))
    return None if updated is None else updated + timedelta(seconds=legacy_lease_seconds)


def lease_expired(
    doc: Mapping[str, Any],
    now: datetime,
    legacy_lease_seconds: float = DEFAULT_LEGACY_LEASE_SECONDS,
) -> bool:
    """True when a processing run's lease has run out (or it never had a readable one)."""
    if doc.get("status") != PROCESSING:
        return False
    expires = lease_end(doc, legacy_lease_seconds)
    return expires is None or expires <= now


def legacy_held(
    docs: Iterable[Mapping[str, Any]], *, now: datetime, legacy_lease_seconds: float
) -> list[RunDocument]:
    """The documents held by the original tool whose lease has not run out yet."""
    return [
        dict(doc)
        for doc in docs
        if legacy_claim(doc) and not lease_expired(doc, now, legacy_lease_seconds)
    ]


def legacy_hold_message(
    doc: Mapping[str, Any], *, now: datetime, legacy_lease_seconds: float
) -> str:
    """One line for the log: who holds the run, for how long, how to take it over."""
    updated = parse_timestamp(doc.get("updated_at"))
    age = "?" if updated is None else str(now - updated).split(".")[0]
    until = lease_end(doc, legacy_lease_seconds)
    return (
        f"[{doc.get('_id')}] processing by the original tool on host {doc.get('worker_id')} "
        f"(last updated {age} ago); left alone until {until and timestamp(until)} "
        f"(legacy_lease_seconds). To take it over now: stop the original worker on "
        f"{doc.get('worker_id')}, then run: dfarchive release {doc.get('_id')}"
    )


def holder(doc: Mapping[str, Any]) -> Any:
    """Who holds (or held) the claim: the process if known, else the host."""
    return doc.get("claimed_by") or doc.get("worker_id")


def _touch(doc: Mapping[str, Any], now: datetime, **changes: Any) -> RunDocument:
    return {**doc, **changes, "updated_at": timestamp(now)}


def _holds(doc: Mapping[str, Any], token: str) -> bool:
    return doc.get("status") == PROCESSING and doc.get("claim_token") == token


def _ended_by(doc: Mapping[str, Any], token: str, *statuses: str) -> bool:
    """We already ended our claim this way (a retried write that committed came back as 409)."""
    return doc.get("status") in statuses and doc.get("claim_token") == token


def _require_claim(doc: Mapping[str, Any], token: str) -> None:
    if not _holds(doc, token):
        raise ClaimLost(
            f"run {doc.get('_id')!r} is no longer held by this worker "
            f"(now {doc.get('status')!r}, worker {holder(doc)})"
        )


def _with_attempt(
    doc: Mapping[str, Any], now: datetime, outcome: str, error: str | None = None
) -> list[dict[str, Any]]:
    """The bounded attempt history, ending with the current holder's attempt."""
    attempt = {
        "worker_id": doc.get("worker_id"),
        "claimed_by": doc.get("claimed_by"),
        "started_at": doc.get("claimed_at"),
        "ended_at": timestamp(now),
        "outcome": outcome,
    }
    if error is not None:
        attempt["error"] = error[:ERROR_CHARS]
    history = doc.get("attempts")
    history = list(history) if isinstance(history, list) else []
    return [*history, attempt][-ATTEMPTS_KEPT:]


def claim(
    doc: RunDocument,
    *,
    worker_id: str,
    token: str,
    now: datetime,
    lease_seconds: float,
    claimed_by: str | None = None,
) -> RunDocument:
    """pending → processing, held by ``worker_id`` under the unique ``token``.

    ``worker_id`` is the host, as in the original tool's schema (its start-up reset
    compares it with the host name); ``claimed_by`` says which process and thread
    (default: ``worker_id``). A document already claimed with this token is returned
    unchanged: a claim whose reply was lost and that came back as a conflict is
    recognised as ours.
    """
    if _holds(doc, token):
        return doc
    if doc.get("status") != PENDING:
        raise NotClaimable(
            f"run {doc.get('_id')!r} is {doc.get('status')!r}"
            + (f" (held by {holder(doc)})" if doc.get("status") == PROCESSING else "")
        )
    stamp = timestamp(now)
    return _touch(
        doc,
        now,
        status=PROCESSING,
        worker_id=worker_id,
        claimed_by=claimed_by or worker_id,
        claim_token=token,
        claimed_at=stamp,
        heartbeat_at=stamp,
        lease_expires_at=timestamp(now + timedelta(seconds=lease_seconds)),
        progress=None,
    )


def heartbeat(
    doc: Mapping[str, Any],
    *,
    token: str,
    now: datetime,
    lease_seconds: float,
    progress: Mapping[str, Any] | None = None,
) -> RunDocument:
    """Extend the lease of a run we hold; raises :class:`ClaimLost` if we no longer do."""
    _require_claim(doc, token)
    changes: dict[str, Any] = {
        "heartbeat_at": timestamp(now),
        "lease_expires_at": timestamp(now + timedelta(seconds=lease_seconds)),
    }
    if progress is not None:
        changes["progress"] = dict(progress)
    return _touch(doc, now, **changes)


def _end_claim(doc: Mapping[str, Any], now: datetime, **changes: Any) -> RunDocument:
    # claim_token stays: it lets a retried write recognise that this ending was ours.
    return _touch(doc, now, lease_expires_at=None, enqueued_at=None, **changes)


def finish(
    doc: RunDocument, *, token: str, now: datetime, archive: Mapping[str, Any]
) -> RunDocument:
    """processing → encrypted, recording what was produced."""
    if _ended_by(doc, token, ENCRYPTED):
        return doc
    _require_claim(doc, token)
    return _end_claim(
        doc,
        now,
        status=ENCRYPTED,
        archive=dict(archive),
        last_error=None,
        attempts=_with_attempt(doc, now, ENCRYPTED),
        progress=_final_progress(doc, now),
    )


def _final_progress(doc: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    progress = doc.get("progress")
    if not isinstance(progress, dict):
        return None
    done = progress.get("bytes_total") or progress.get("bytes_done") or 0
    return {**progress, "bytes_done": done, "updated_at": timestamp(now)}


def fail(
    doc: RunDocument, *, token: str, now: datetime, error: str, max_attempts: int
) -> RunDocument:
    """processing → pending with ``failure_count + 1``, or → failed at ``max_attempts``."""
    if _ended_by(doc, token, PENDING, FAILED):
        return doc
    _require_claim(doc, token)
    return _count_failure(doc, now=now, error=error, max_attempts=max_attempts)


def fail_for_good(doc: RunDocument, *, token: str, now: datetime, error: str) -> RunDocument:
    """processing → failed whatever ``failure_count`` says: retrying can't help (a
    document naming a folder it must not archive); an operator has to look."""
    if _ended_by(doc, token, FAILED):
        return doc
    _require_claim(doc, token)
    return _count_failure(doc, now=now, error=error, max_attempts=1)


def _count_failure(
    doc: Mapping[str, Any], *, now: datetime, error: str, max_attempts: int
) -> RunDocument:
    count = failure_count(doc) + 1
    status = FAILED if count >= max_attempts else PENDING
    error = error[:ERROR_CHARS]
    return _end_claim(
        doc,
        now,
        status=status,
        failure_count=count,
        last_error=error,
        attempts=_with_attempt(doc, now, "failed", error),
    )


def release(
    doc: RunDocument, *, token: str, now: datetime, reason: str, error: bool = False
) -> RunDocument:
    """processing → pending without counting a failure (shutdown, cancellation, no
    space). With ``error`` the reason is also the run's ``last_error``."""
    if _ended_by(doc, token, PENDING):
        return doc
    _require_claim(doc, token)
    changes = {"last_error": reason[:ERROR_CHARS]} if error else {}
    attempts = _with_attempt(doc, now, "released", reason)
    return _end_claim(doc, now, status=PENDING, attempts=attempts, **changes)


def reclaim_expired(
    doc: Mapping[str, Any],
    *,
    now: datetime,
    max_attempts: int,
    legacy_lease_seconds: float = DEFAULT_LEGACY_LEASE_SECONDS,
) -> RunDocument:
    """An expired lease (worker died, host lost) → pending, counted as a failure."""
    if not lease_expired(doc, now, legacy_lease_seconds):
        raise TransitionRefused(f"run {doc.get('_id')!r} has no expired lease")
    if legacy_claim(doc):
        error = (
            f"lease expired: the original tool on {doc.get('worker_id')} held it with no "
            f"lease, last updated {doc.get('updated_at')} (legacy_lease_seconds passed)"
        )
    else:
        error = (
            f"lease expired: worker {holder(doc)} stopped renewing its claim "
            f"(last heartbeat {doc.get('heartbeat_at')})"
        )
    return _count_failure(
        {**doc, "claim_token": None},  # the dead holder's late writes must not match
        now=now,
        error=error,
        max_attempts=max_attempts,
    )


def force_release(doc: Mapping[str, Any], *, now: datetime) -> RunDocument:
    """Operator action: processing → pending, not counted, whatever the lease says.

    For a claim no worker will end: its holder is gone but the lease does not run out
    (hand-edited, or written by a host whose clock ran far ahead). A holder that is in
    fact alive finds at its next heartbeat that the run is no longer its own, stops,
    and removes its partial files.
    """
    if doc.get("status") != PROCESSING:
        raise TransitionRefused(
            f"run {doc.get('_id')!r} is {doc.get('status')!r}; only processing runs can be "
            "released"
        )
    reason = (
        f"released by an operator from worker {holder(doc)} "
        f"(lease to {doc.get('lease_expires_at')})"
    )
    return _end_claim(
        {**doc, "claim_token": None},  # the holder's late writes must not match
        now,
        status=PENDING,
        attempts=_with_attempt(doc, now, "released", reason),
    )


def retry(doc: Mapping[str, Any], *, now: datetime) -> RunDocument:
    """Operator action: failed → pending with the failure count reset."""
    if doc.get("status") != FAILED:
        raise TransitionRefused(
            f"run {doc.get('_id')!r} is {doc.get('status')!r}; only failed runs can be retried"
        )
    return _touch(doc, now, status=PENDING, failure_count=0, enqueued_at=None)


def adopt(doc: RunDocument, *, record: Mapping[str, Any], now: datetime) -> RunDocument:
    """Operator action: record the archive of a run the original tool archived.

    Only an ``encrypted`` run without an archive record can be adopted; ``record``
    becomes its ``archive``, with ``adopted_at`` = ``now``. The original fields keep
    their values (``updated_at`` and ``worker_id`` still say when and where the original
    tool archived the run). A document already holding exactly this record is returned
    unchanged (a retried write that committed).
    """
    adopted = {**record, "adopted_at": timestamp(now)}
    if doc.get("archive") == adopted:
        return doc
    if doc.get("status") != ENCRYPTED:
        raise TransitionRefused(
            f"run {doc.get('_id')!r} is {doc.get('status')!r}; only encrypted runs can be "
            "adopted"
        )
    if doc.get("archive") is not None:
        raise TransitionRefused(f"run {doc.get('_id')!r} already has an archive record")
    return {**doc, "archive": adopted}


def mark_enqueued(doc: Mapping[str, Any], *, now: datetime) -> RunDocument:
    """Record that an ``archive_run`` message was just sent for this pending run."""
    if doc.get("status") != PENDING:
        raise NotClaimable(f"run {doc.get('_id')!r} is {doc.get('status')!r}")
    return {**doc, "enqueued_at": timestamp(now)}


def due_for_enqueue(doc: Mapping[str, Any], *, now: datetime, window_seconds: float) -> bool:
    """A pending run whose last message (if any) is older than the re-enqueue window."""
    if doc.get("status") != PENDING:
        return False
    last = parse_timestamp(doc.get("enqueued_at"))
    return last is None or now - last >= timedelta(seconds=window_seconds)


# -- fixity audits (dfarchive.coordination.fixity) -------------------------------------------------
# These touch only ``fixity``, ``fixity_history`` and ``fixity_enqueued_at``: never the
# status, claim or ``updated_at`` fields (an audit is not a change of the run).

#: Earlier fixity checks a document keeps in ``fixity_history``.
FIXITY_HISTORY_KEPT = 10


def record_fixity(
    doc: RunDocument, *, check: Mapping[str, Any], history_kept: int = FIXITY_HISTORY_KEPT
) -> RunDocument:
    """Record an audit's outcome as ``fixity``; the previous one joins the bounded
    ``fixity_history``. Clears ``fixity_enqueued_at`` (a duplicate message then finds
    nothing to do). A document already holding exactly ``check`` is returned unchanged
    (a retried write that committed).
    """
    if doc.get("fixity") == check:
        return doc
    if doc.get("status") != ENCRYPTED:
        raise TransitionRefused(
            f"run {doc.get('_id')!r} is {doc.get('status')!r}; only encrypted runs are audited"
        )
    history = doc.get("fixity_history")
    history = list(history) if isinstance(history, list) else []
    previous = doc.get("fixity")
    if isinstance(previous, Mapping):
        history.append(dict(previous))
    return {
        **doc,
        "fixity": dict(check),
        "fixity_history": history[-history_kept:] if history_kept > 0 else [],
        "fixity_enqueued_at": None,
    }


def mark_fixity_enqueued(doc: Mapping[str, Any], *, now: datetime | None) -> RunDocument:
    """Record that an audit message was just sent for this encrypted run (None: unsent)."""
    if doc.get("status") != ENCRYPTED:
        raise TransitionRefused(f"run {doc.get('_id')!r} is {doc.get('status')!r}")
    return {**doc, "fixity_enqueued_at": None if now is None else timestamp(now)}
