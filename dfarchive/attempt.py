"""One attempt at one run: claim it, archive it under a lease, record the outcome.

Used by the Dramatiq actor and by the all-in-one ``dataflow_archive`` loop alike, so
both follow the same rules:

* a run we can't claim (someone else holds it, it is done or failed) is left alone;
* a pipeline error is a counted failure (``fail``), with the error text recorded;
* a cancellation (shutdown) puts the run back to pending uncounted (``release``);
* a lost claim (our lease was reclaimed) leaves the document to its new holder;
* the store being unreachable is retried with backoff and never counted.

Observers (:class:`AttemptObserver`) watch attempts without taking part: the terminal
progress view and the metrics are two. Their hooks must be quick; an observer that
raises is logged and ignored, never fails a run.
"""

from __future__ import annotations

import enum
import errno
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import (
    Cancelled,
    ClaimLost,
    DfArchiveError,
    OutOfSpace,
    StoreUnavailable,
    UnknownRun,
)
from .keys import Recipient
from .lease import LeaseKeeper
from .pipeline import ArchiveSettings, archive_run, run_folder_path
from .store.base import Claim, RunStore

log = logging.getLogger(__name__)

#: A write that fails with these means the destination is full, not the run is bad.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

T = TypeVar("T")

#: Backoff for store calls while the store is unreachable: first wait, cap, and how
#: long to keep trying before giving the call up.
RETRY_FIRST, RETRY_CAP, RETRY_FOR = 1.0, 30.0, 600.0


class Outcome(enum.Enum):
    ENCRYPTED = "encrypted"
    FAILED = "failed"  # counted: back to pending, or failed for good
    RELEASED = "released"  # cancelled: back to pending, uncounted
    DEFERRED = "deferred"  # no room at the destination: back to pending, uncounted
    LOST = "lost"  # our claim was taken over; nothing written
    SKIPPED = "skipped"  # not claimable (another worker, done, failed, unknown)


class AttemptObserver:
    """No-op hooks called while runs are archived; subclasses override what they need."""

    def progress(self, run_id: str, done: int, total: int) -> None:
        """Plaintext bytes done of an estimated total, about once a second."""

    def ended(self, run_id: str, outcome: Outcome, record: Mapping[str, Any] | None) -> None:
        """A claimed run's attempt is over; ``record`` is its archive record if ENCRYPTED."""


def _notify(observers: Sequence[AttemptObserver], hook: Callable[[AttemptObserver], None]) -> None:
    for observer in observers:
        try:
            hook(observer)
        except Exception:
            log.exception("observer %r failed; ignored", observer)


def with_store_retries(
    call: Callable[[], T], what: str, *, cancel: threading.Event | None = None
) -> T:
    """Run ``call``, retrying with backoff while the store is unreachable.

    Raises StoreUnavailable once RETRY_FOR seconds have passed, or at once if
    ``cancel`` is set while waiting.
    """
    delay, deadline = RETRY_FIRST, time.monotonic() + RETRY_FOR
    while True:
        try:
            return call()
        except StoreUnavailable as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: store unreachable (%s); retrying in %.0f s", what, error, delay)
            if cancel is not None and cancel.wait(delay):
                raise
            if cancel is None:
                time.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)


def attempt_run(
    store: RunStore,
    run_id: str,
    *,
    worker_id: str,
    settings: ArchiveSettings,
    recipient: Recipient,
    cancel: threading.Event | None = None,
    observers: Sequence[AttemptObserver] = (),
) -> Outcome:
    """Claim ``run_id`` and archive it. Never raises for a run-level problem.

    ``cancel`` (one event per run) stops the work and releases the run uncounted.
    A BaseException from outside (Dramatiq's Shutdown, KeyboardInterrupt) also
    releases the run, then propagates. ``observers`` see its progress and its end.
    """
    cancel = cancel or threading.Event()
    try:
        claim = with_store_retries(
            lambda: store.claim(run_id, worker_id=worker_id), f"[{run_id}] claim", cancel=cancel
        )
    except UnknownRun:
        log.warning("[%s] no such run in the store; ignoring the message", run_id)
        return Outcome.SKIPPED
    if claim is None:
        log.info("[%s] not claimable (held elsewhere, done or failed); skipping", run_id)
        return Outcome.SKIPPED
    log.info("[%s] claimed by %s", run_id, worker_id)
    outcome, record = _archive_claimed(
        store, claim, claim.path, settings, recipient, cancel, observers
    )
    _notify(observers, lambda observer: observer.ended(run_id, outcome, record))
    return outcome


def _archive_claimed(
    store: RunStore,
    claim: Claim,
    run_path: object,  # as stored: checked by run_folder_path, a counted failure if unusable
    settings: ArchiveSettings,
    recipient: Recipient,
    cancel: threading.Event,
    observers: Sequence[AttemptObserver],
) -> tuple[Outcome, dict[str, Any] | None]:
    run_id = claim.run_id
    lease = LeaseKeeper(store, claim, cancel)

    def progress(done: int, total: int) -> None:
        lease.update_progress(done, total)
        _notify(observers, lambda observer: observer.progress(run_id, done, total))

    try:
        with lease:
            record = archive_run(
                run_id,
                run_folder_path(run_path),
                settings,
                recipient,
                progress=progress,
                cancel=cancel,
                before_publish=lease.confirm,
            )
    except (Cancelled, ClaimLost) as error:
        if lease.lost:
            return Outcome.LOST, None
        reason = f"cancelled: {error}"
        _end(store, claim, lambda: store.release(claim, reason))
        log.info("[%s] cancelled; released back to pending", run_id)
        return Outcome.RELEASED, None
    except (OutOfSpace, OSError) as error:
        if lease.lost:
            return Outcome.LOST, None
        if not (isinstance(error, OutOfSpace) or error.errno in NO_SPACE_ERRNOS):
            return _failed(store, claim, error)
        message = f"{type(error).__name__}: {error}"
        _end(store, claim, lambda: store.release(claim, message, error=True))
        log.error("[%s] no space to archive, will retry later: %s", run_id, message)
        return Outcome.DEFERRED, None
    except DfArchiveError as error:
        if lease.lost:
            return Outcome.LOST, None
        return _failed(store, claim, error)
    except BaseException:
        if not lease.lost:
            _end(store, claim, lambda: store.release(claim, "worker interrupted"))
            log.warning("[%s] interrupted; released back to pending", run_id)
        raise
    doc = _end(store, claim, lambda: store.finish(claim, record))
    return (Outcome.ENCRYPTED, record) if doc else (Outcome.LOST, None)


def _failed(
    store: RunStore, claim: Claim, error: BaseException
) -> tuple[Outcome, dict[str, Any] | None]:
    """Count a failure of the attempt (back to pending, or failed at max_attempts)."""
    message = f"{type(error).__name__}: {error}"
    doc = _end(store, claim, lambda: store.fail(claim, message))
    status = doc["status"] if doc else "unknown"
    log.error("[%s] attempt failed (%s; run now %s)", claim.run_id, message, status)
    return Outcome.FAILED, None


def _end(store: RunStore, claim: Claim, transition: Callable[[], dict]) -> dict | None:
    """Apply the closing transition; None if the claim was lost meanwhile."""
    try:
        return with_store_retries(transition, f"[{claim.run_id}] update")
    except ClaimLost:
        log.warning("[%s] claim lost before the outcome was recorded", claim.run_id)
        return None
    except StoreUnavailable:
        log.error(
            "[%s] store unreachable; outcome not recorded (the lease will expire and "
            "the run will be retried)",
            claim.run_id,
        )
        return None
