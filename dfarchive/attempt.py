"""One attempt at one run: claim it, archive it under a lease, record the outcome.

Used by the Dramatiq actor and by the all-in-one ``dataflow_archive`` loop alike, so
both follow the same rules:

* a run we can't claim (someone else holds it, it is done or failed) is left alone;
* a pipeline error is a counted failure (``fail``), with the error text recorded;
* a cancellation (shutdown) puts the run back to pending uncounted (``release``);
* a lost claim (our lease was reclaimed) leaves the document to its new holder;
* the store being unreachable is retried with backoff and never counted.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import Cancelled, ClaimLost, DfArchiveError, StoreUnavailable, UnknownRun
from .keys import Recipient
from .lease import LeaseKeeper
from .pipeline import ArchiveSettings, archive_run
from .store.base import Claim, RunStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Backoff for store calls while the store is unreachable: first wait, cap, and how
#: long to keep trying before giving the call up.
RETRY_FIRST, RETRY_CAP, RETRY_FOR = 1.0, 30.0, 600.0


class Outcome(enum.Enum):
    ENCRYPTED = "encrypted"
    FAILED = "failed"  # counted: back to pending, or failed for good
    RELEASED = "released"  # cancelled: back to pending, uncounted
    LOST = "lost"  # our claim was taken over; nothing written
    SKIPPED = "skipped"  # not claimable (another worker, done, failed, unknown)


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
) -> Outcome:
    """Claim ``run_id`` and archive it. Never raises for a run-level problem.

    ``cancel`` (one event per run) stops the work and releases the run uncounted.
    A BaseException from outside (Dramatiq's Shutdown, KeyboardInterrupt) also
    releases the run, then propagates.
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
    doc = store.get(run_id) or {}
    log.info("[%s] claimed by %s", run_id, worker_id)
    return _archive_claimed(store, claim, Path(doc["path"]), settings, recipient, cancel)


def _archive_claimed(
    store: RunStore,
    claim: Claim,
    run_path: Path,
    settings: ArchiveSettings,
    recipient: Recipient,
    cancel: threading.Event,
) -> Outcome:
    run_id = claim.run_id
    lease = LeaseKeeper(store, claim, cancel)
    try:
        with lease:
            record = archive_run(
                run_id,
                run_path,
                settings,
                recipient,
                progress=lease.update_progress,
                cancel=cancel,
                before_publish=lease.confirm,
            )
    except (Cancelled, ClaimLost) as error:
        if lease.lost:
            return Outcome.LOST
        reason = f"cancelled: {error}"
        _end(store, claim, lambda: store.release(claim, reason))
        log.info("[%s] cancelled; released back to pending", run_id)
        return Outcome.RELEASED
    except (DfArchiveError, OSError) as error:
        if lease.lost:
            return Outcome.LOST
        message = f"{type(error).__name__}: {error}"
        doc = _end(store, claim, lambda: store.fail(claim, message))
        status = doc["status"] if doc else "unknown"
        log.error("[%s] attempt failed (%s; run now %s)", run_id, message, status)
        return Outcome.FAILED
    except BaseException:
        if not lease.lost:
            _end(store, claim, lambda: store.release(claim, "worker interrupted"))
            log.warning("[%s] interrupted; released back to pending", run_id)
        raise
    doc = _end(store, claim, lambda: store.finish(claim, record))
    return Outcome.ENCRYPTED if doc else Outcome.LOST


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
