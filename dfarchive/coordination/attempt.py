"""One attempt at one run: claim it, archive it under a lease, record the outcome.

Used by the Dramatiq actor and by the all-in-one ``dataflow_archive`` loop alike, so
both follow the same rules:

* a run we can't claim (someone else holds it, it is done or failed) is left alone;
* a pipeline error is a counted failure (``fail``), with the error text recorded;
* a cancellation (shutdown) puts the run back to pending uncounted (``release``);
* a lost claim (our lease was reclaimed) leaves the document to its new holder;
* the store being unreachable is retried with backoff and never counted;
* a document that names a run id or a folder dfarchive must not write or read (not
  one safe file name; not ``sequencing_path/<sequencer>/<run>``) fails the run at
  once, before anything is read or written;
* an unusable recipient key (revoked, expired, removed since start-up) is not the
  run's fault: the run goes back to pending uncounted, and the process's
  :class:`RecipientGate` stops it taking new runs until the key is usable again.

Observers (:class:`AttemptObserver`) watch attempts without taking part: the terminal
progress view and the metrics are two. Their hooks must be quick; an observer that
raises is logged and ignored, never fails a run.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dfarchive.archiving.keys import Recipient, check_recipient
from dfarchive.archiving.pipeline import ArchiveSettings, archive_run
from dfarchive.coordination.lease import LeaseKeeper
from dfarchive.coordination.leftovers import remove_legacy_key_leftover
from dfarchive.coordination.scan import run_id_problem, run_path_problem
from dfarchive.coordination.store.base import Claim, RunStore
from dfarchive.errors import (
    Cancelled,
    ClaimLost,
    DfArchiveError,
    OutOfSpace,
    RecipientError,
    StoreError,
    StoreUnavailable,
    ToolError,
    UnknownRun,
)

log = logging.getLogger(__name__)

#: A write that fails with these means the destination is full, not the run is bad.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

T = TypeVar("T")

#: Backoff for store calls while the store is unreachable: first wait, cap, and how
#: long to keep trying before giving the call up.
RETRY_FIRST, RETRY_CAP, RETRY_FOR = 1.0, 30.0, 600.0


class AttemptOutcome(enum.Enum):
    ENCRYPTED = "encrypted"
    FAILED = "failed"  # counted: back to pending, or failed for good
    RELEASED = "released"  # cancelled: back to pending, uncounted
    DEFERRED = "deferred"  # no room at the destination: back to pending, uncounted
    LOST = "lost"  # our claim was taken over; nothing written
    SKIPPED = "skipped"  # not claimable (another worker, done, failed, unknown)
    NO_RECIPIENT = "no-recipient"  # recipient key unusable: back to pending, uncounted


#: How often a closed :class:`RecipientGate` checks the key again, by default.
RECIPIENT_RECHECK_SECONDS = 30.0


class RecipientGate:
    """Whether this process may take new runs, as far as the recipient key goes.

    Each attempt checks the pinned recipient before its heavy work (:meth:`check`).
    The first failure is logged loudly, once; until a check passes again the gate is
    closed: :meth:`is_open` is False (it checks again at most every
    ``recheck_seconds``) and the process takes no new runs. Thread-safe.
    """

    def __init__(
        self,
        recipient: Recipient,
        *,
        gnupg_home: Path | None,
        recheck_seconds: float = RECIPIENT_RECHECK_SECONDS,
    ) -> None:
        self.recipient = recipient
        self.gnupg_home = None if gnupg_home is None else str(gnupg_home)
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._checked = 0.0  # time.monotonic() of the last failed check

    def check(self) -> str | None:
        """Check the key now: None if it can be encrypted to, else why not."""
        try:
            check_recipient(self.recipient, gnupg_home=self.gnupg_home)
        except (RecipientError, ToolError) as error:
            self.failed(str(error))
            return str(error)
        with self._lock:
            was, self._problem = self._problem, None
        if was is not None:
            log.warning(
                "GPG recipient %s is usable again; taking new runs", self.recipient.fingerprint
            )
        return None

    def failed(self, problem: str) -> None:
        """Record that the key can't be used (by :meth:`check`, or gpg at key wrap)."""
        with self._lock:
            first = self._problem is None
            self._problem, self._checked = problem, time.monotonic()
        if first:
            log.critical(
                "GPG recipient %s can no longer be encrypted to: %s. Runs go back to "
                "pending (not counted) and no new run is taken until the key is usable "
                "again (checked every %g s); fix the keyring (gnupg_home or $GNUPGHOME)",
                self.recipient.fingerprint,
                problem,
                self.recheck_seconds,
            )

    def is_open(self) -> bool:
        """True unless the key was found unusable and a check now still says so."""
        with self._lock:
            problem, checked = self._problem, self._checked
        if problem is None:
            return True
        if time.monotonic() - checked < self.recheck_seconds:
            return False
        return self.check() is None


class AttemptObserver:
    """No-op hooks called while runs are archived; subclasses override what they need."""

    def progress(self, run_id: str, done: int, total: int) -> None:
        """Plaintext bytes done of an estimated total, about once a second."""

    def ended(self, run_id: str, outcome: AttemptOutcome, record: Mapping[str, Any] | None) -> None:
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
    sequencing_path: Path,
    cancel: threading.Event | None = None,
    observers: Sequence[AttemptObserver] = (),
    gate: RecipientGate | None = None,
) -> AttemptOutcome:
    """Claim ``run_id`` and archive it. Never raises for a run-level problem.

    ``worker_id`` is the host (see :func:`runstate.claim`). ``sequencing_path``: the
    only place run folders may be. ``cancel`` (one event per run) stops the work and
    releases the run uncounted. A BaseException from outside (Dramatiq's Shutdown,
    KeyboardInterrupt) also releases the run, then propagates. ``observers`` see its
    progress and its end. ``gate``: the process's :class:`RecipientGate` (default:
    one for this attempt alone).
    """
    cancel = cancel or threading.Event()
    claimed_by = f"{worker_id}:{os.getpid()}:{threading.get_native_id()}"
    try:
        claim = with_store_retries(
            lambda: store.claim(run_id, worker_id=worker_id, claimed_by=claimed_by),
            f"[{run_id}] claim",
            cancel=cancel,
        )
    except UnknownRun:
        problem = run_id_problem(run_id)
        if problem is not None:  # e.g. "..", which a CouchDB URL can't address
            log.error("[%r] refused: %s; the store can't update it: delete it", run_id, problem)
        else:
            log.warning("[%s] no such run in the store; ignoring the message", run_id)
        return AttemptOutcome.SKIPPED
    if claim is None:
        log.info("[%s] not claimable (held elsewhere, done or failed); skipping", run_id)
        return AttemptOutcome.SKIPPED
    log.info("[%s] claimed by %s", run_id, claimed_by)
    outcome, record = _checked_attempt(
        store, claim, settings, recipient, sequencing_path, cancel, observers, gate
    )
    _notify(observers, lambda observer: observer.ended(run_id, outcome, record))
    return outcome


def _checked_attempt(
    store: RunStore,
    claim: Claim,
    settings: ArchiveSettings,
    recipient: Recipient,
    sequencing_path: Path,
    cancel: threading.Event,
    observers: Sequence[AttemptObserver],
    gate: RecipientGate | None,
) -> tuple[AttemptOutcome, dict[str, Any] | None]:
    """The checks before the heavy work, then the work."""
    problem = run_id_problem(claim.run_id) or run_path_problem(
        claim.path, claim.run_id, sequencing_path
    )
    if problem is not None:
        message = f"refused: {problem}; nothing was read or written"
        doc = _end(store, claim, lambda: store.fail_for_good(claim, message))
        log.error("[%r] %s (run now %s)", claim.run_id, message, doc and doc["status"])
        return AttemptOutcome.FAILED, None
    gate = gate or RecipientGate(recipient, gnupg_home=settings.gnupg_home)
    unusable = gate.check()
    if unusable is not None:
        return _recipient_unusable(store, claim, unusable), None
    stored = claim.path
    if not isinstance(stored, str):  # run_path_problem() refused anything else above
        raise TypeError(f"run {claim.run_id!r}: path {stored!r} is not a string")
    run_path = Path(os.path.normpath(stored))
    return _archive_claimed(store, claim, run_path, settings, recipient, cancel, observers, gate)


def _recipient_unusable(store: RunStore, claim: Claim, problem: str) -> AttemptOutcome:
    message = f"not archived now: the GPG recipient is unusable: {problem}"
    _end(store, claim, lambda: store.release(claim, message, error=True))
    log.info("[%s] released back to pending (not counted): recipient unusable", claim.run_id)
    return AttemptOutcome.NO_RECIPIENT


def _archive_claimed(
    store: RunStore,
    claim: Claim,
    run_path: Path,
    settings: ArchiveSettings,
    recipient: Recipient,
    cancel: threading.Event,
    observers: Sequence[AttemptObserver],
    gate: RecipientGate,
) -> tuple[AttemptOutcome, dict[str, Any] | None]:
    run_id = claim.run_id
    lease = LeaseKeeper(store, claim, cancel)

    def progress(done: int, total: int) -> None:
        lease.update_progress(done, total)
        _notify(observers, lambda observer: observer.progress(run_id, done, total))

    try:
        with lease:
            record = archive_run(
                run_id,
                run_path,
                settings,
                recipient,
                progress=progress,
                cancel=cancel,
                before_publish=lease.confirm,
            )
    except (Cancelled, ClaimLost) as error:
        if lease.lost:
            return AttemptOutcome.LOST, None
        if lease.fenced:
            return _release_fenced(store, claim, lease), None
        reason = f"cancelled: {error}"
        _end(store, claim, lambda: store.release(claim, reason))
        log.info("[%s] cancelled; released back to pending", run_id)
        return AttemptOutcome.RELEASED, None
    except (OutOfSpace, OSError) as error:
        if lease.lost:
            return AttemptOutcome.LOST, None
        if not (isinstance(error, OutOfSpace) or error.errno in NO_SPACE_ERRNOS):
            return _failed(store, claim, error)
        message = f"{type(error).__name__}: {error}"
        _end(store, claim, lambda: store.release(claim, message, error=True))
        log.error("[%s] no space to archive, will retry later: %s", run_id, message)
        return AttemptOutcome.DEFERRED, None
    except RecipientError as error:  # gpg refused the key at wrap time
        if lease.lost:
            return AttemptOutcome.LOST, None
        gate.failed(str(error))
        return _recipient_unusable(store, claim, str(error)), None
    except DfArchiveError as error:
        if lease.lost:
            return AttemptOutcome.LOST, None
        return _failed(store, claim, error)
    except BaseException:
        if not lease.lost:
            _end(store, claim, lambda: store.release(claim, "worker interrupted"))
            log.warning("[%s] interrupted; released back to pending", run_id)
        raise
    doc = _end(store, claim, lambda: store.finish(claim, record))
    if not doc:
        return AttemptOutcome.LOST, None
    remove_legacy_key_leftover(settings.destination_path, run_id)
    return AttemptOutcome.ENCRYPTED, record


def _release_fenced(store: RunStore, claim: Claim, lease: LeaseKeeper) -> AttemptOutcome:
    """The attempt stopped because the lease could not be renewed: one bounded try to
    release the run uncounted. If the store still does not answer, or the run was
    reclaimed meanwhile, the run is left to its lease (and its new holder)."""
    reason = f"fenced: {lease.fenced}"
    try:
        with store.bounded(lease.request_timeout):
            store.release(claim, reason)
    except (StoreError, ClaimLost) as error:
        log.warning("[%s] %s; not released (%s): left to its lease", claim.run_id, reason, error)
        return AttemptOutcome.LOST
    log.info("[%s] %s; released back to pending", claim.run_id, reason)
    return AttemptOutcome.RELEASED


def _failed(
    store: RunStore, claim: Claim, error: BaseException
) -> tuple[AttemptOutcome, dict[str, Any] | None]:
    """Count a failure of the attempt (back to pending, or failed at max_attempts)."""
    message = f"{type(error).__name__}: {error}"
    doc = _end(store, claim, lambda: store.fail(claim, message))
    status = doc["status"] if doc else "unknown"
    log.error("[%s] attempt failed (%s; run now %s)", claim.run_id, message, status)
    return AttemptOutcome.FAILED, None


def _end(
    store: RunStore, claim: Claim, transition: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
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
