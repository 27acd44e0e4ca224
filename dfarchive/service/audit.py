"""One fixity audit: verify a run's archive (rate-limited, interruptible) and record the
outcome in its document. Used by ``dfarchive verify --all`` and the ``audit_run`` actor.

See :mod:`dfarchive.coordination.fixity` for when runs are due and what is recorded.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dfarchive.coordination import fixity
from dfarchive.coordination.runstate import PENDING, RunDocument
from dfarchive.coordination.store.base import RunStore, utc_now
from dfarchive.errors import Cancelled, DfArchiveError, NotVerifiable, StartupError, Yielded
from dfarchive.ops.verify import (
    KeyUnwrapper,
    RecipientKeys,
    VerifyReport,
    verify_run,
)

log = logging.getLogger(__name__)

#: While auditing, a worker looks for waiting archive work at most this often (seconds).
YIELD_CHECK_SECONDS = 2.0


def archive_work_waiting(store: RunStore) -> bool:
    """Archiving always wins: any pending run (new, released or retried) is work some
    worker should be doing instead of auditing."""
    return bool(store.runs(PENDING))


@dataclass
class AuditSettings:
    """How audits run in this process."""

    limiter: fixity.RateLimiter | None = None
    deep: bool = False
    unwrap: KeyUnwrapper | None = None
    recipient_keys: RecipientKeys | None = None
    host: str = ""


def audit(
    doc: RunDocument,
    settings: AuditSettings,
    *,
    cancel: threading.Event | None = None,
    on_read: Callable[[int], None] | None = None,
) -> tuple[fixity.Check, VerifyReport | None]:
    """Check ``doc``'s archive: the outcome to record, and the report (None if the run
    could not be verified at all).

    Raises: Cancelled; StartupError when this host can't unwrap keys (``deep``): that
    says nothing about the archive, so nothing is recorded.
    """
    cancel = cancel or threading.Event()
    limiter = settings.limiter
    started = time.monotonic()

    def read(n: int) -> None:
        if on_read is not None:
            on_read(n)
        if limiter is not None:
            limiter.consume(n, sleep=cancel.wait)

    report = None
    try:
        report = verify_run(
            doc,
            deep=settings.deep,
            unwrap=settings.unwrap,
            cancel=cancel,
            on_read=read,
            recipient_keys=settings.recipient_keys,
        )
        result, reason = fixity.classify(report.problems, missing=report.missing)
    except NotVerifiable as error:
        result, reason = fixity.FAILED, str(error)
    except (Cancelled, StartupError):
        raise
    except DfArchiveError as error:  # e.g. gpg failed to unwrap the key (deep)
        result, reason = fixity.FAILED, str(error)
    check = fixity.Check(
        checked_at=utc_now(),
        result=result,
        reason=reason,
        host=settings.host or socket.gethostname(),
        seconds=time.monotonic() - started,
        deep=settings.deep,
    )
    return check, report


def audit_and_record(
    store: RunStore,
    doc: RunDocument,
    settings: AuditSettings,
    *,
    yield_to_archiving: bool = False,
    on_read: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[fixity.Check, VerifyReport | None]:
    """Audit ``doc`` and record the outcome in the store.

    With ``yield_to_archiving`` the audit is not started, or is stopped, when a run is
    pending (looked for every YIELD_CHECK_SECONDS while reading): raises Yielded,
    recording nothing. Setting ``cancel`` stops it too (Cancelled, nothing recorded).
    Raises UnknownRun, TransitionRefused, StoreError.
    """
    cancel = cancel or threading.Event()
    stop_for_archiving = threading.Event()
    if yield_to_archiving and archive_work_waiting(store):
        raise Yielded(f"[{doc['_id']}] audit not started: archive work is waiting")
    next_look = time.monotonic() + YIELD_CHECK_SECONDS

    def read(n: int) -> None:
        nonlocal next_look
        if on_read is not None:
            on_read(n)
        if yield_to_archiving and time.monotonic() >= next_look:
            next_look = time.monotonic() + YIELD_CHECK_SECONDS
            if archive_work_waiting(store):
                stop_for_archiving.set()
                cancel.set()

    try:
        check, report = audit(doc, settings, cancel=cancel, on_read=read)
    except Cancelled:
        if stop_for_archiving.is_set():
            raise Yielded(f"[{doc['_id']}] audit stopped: archive work arrived") from None
        raise
    store.record_fixity(doc["_id"], check.record())
    return check, report
