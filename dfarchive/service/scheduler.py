"""The scheduling pass: scan → register → reclaim expired leases → enqueue.

Dramatiq has no scheduler, so this runs as its own loop (``dfarchive scheduler``, or
inside ``dataflow_archive`` when a broker is configured). Several schedulers at once
are safe: registration is idempotent, reclaiming is a compare-and-swap, and a run is
enqueued only by the scheduler whose ``mark_enqueued_many`` write wins.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from dfarchive.coordination import runstate
from dfarchive.coordination.runstate import RunDocument
from dfarchive.coordination.scan import scan_runs
from dfarchive.coordination.store.base import NewRun, RunStore
from dfarchive.errors import BrokerError, DfArchiveError, StartupError, StoreUnavailable
from dfarchive.plumbing.sigsafe import SignalSafeEvent
from dfarchive.service.config import Config

log = logging.getLogger(__name__)

#: A pending run is re-sent only if its last message is older than this. Workers can
#: be busy for hours, so re-sending every pass would flood the queue; a message lost
#: (broker restarted without it) is re-sent after this window.
REENQUEUE_WINDOW = 3600.0


@dataclass
class PassReport:
    found: int = 0
    registered: list[str] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)
    skipped: int = 0
    audits: list[str] = field(default_factory=list)  # runs sent for a fixity audit


def schedule_pass(
    store: RunStore,
    config: Config,
    *,
    worker_id: str,
    enqueue: Callable[[str], None] | None = None,
    window: float = REENQUEUE_WINDOW,
    enqueue_audit: Callable[[str], None] | None = None,
) -> PassReport:
    """One pass. ``enqueue`` None: register and reclaim only (the local loop claims).
    ``enqueue_audit``: also send the fixity audits that are due (when
    ``fixity_interval_days`` is set; see :func:`enqueue_audits_due`)."""
    report = PassReport()
    try:
        scanned = scan_runs(config.sequencing_path, sentinel=config.sentinel, ignore=config.ignore)
    except OSError as error:
        log.error("cannot scan %s: %s", config.sequencing_path, error)
        scanned = None
    if scanned is not None:
        for folder in scanned.skipped:
            log.error("not registering %r: %s", folder.path, folder.reason)  # %r: one line
        report.found, report.skipped = len(scanned.runs), len(scanned.skipped)
        report.registered = register_found(store, scanned.runs, worker_id=worker_id)
        for run_id in report.registered:
            log.info("[%s] registered as pending", run_id)
    sweep = store.sweep_leases()
    report.reclaimed = sweep.reclaimed
    for run_id in report.reclaimed:
        log.warning("[%s] lease expired; put back to pending", run_id)
    for doc in sweep.legacy_held:
        log.warning(
            "%s",
            runstate.legacy_hold_message(
                doc, now=store.clock(), legacy_lease_seconds=store.legacy_lease_seconds
            ),
        )
    if enqueue is not None:
        report.enqueued = enqueue_due(store, enqueue, window)
    if enqueue_audit is not None and config.fixity_interval_days > 0:
        report.audits = enqueue_audits_due(store, config, enqueue_audit)
    return report


# -- fixity audits (dfarchive.coordination.fixity) -------------------------------------------------

#: An audit message not acted on (lost, or waiting behind a backlog) is sent again
#: after this long, or after the audit interval if that is shorter. Duplicates are
#: harmless: an audit recorded clears the run's mark, and a message finding no mark
#: does nothing.
FIXITY_REENQUEUE_WINDOW = 86400.0
#: The encrypted runs are read for due audits at most this often (seconds), and at
#: least every hundredth of the interval or every scan_interval if that is longer.
FIXITY_PASS_SECONDS = 300.0


def enqueue_audits_due(
    store: RunStore, config: Config, enqueue: Callable[[str], None]
) -> list[str]:
    """Mark, then send an audit message for, every encrypted run due for one (as
    :func:`enqueue_due` does for archiving: the scheduler whose mark wins sends).
    Reads the encrypted runs only every FIXITY_PASS_SECONDS (shorter for short
    intervals), timed per store handle (``store.known``). Returns the ids sent.
    """
    interval = timedelta(days=config.fixity_interval_days)
    every = max(config.scan_interval, min(FIXITY_PASS_SECONDS, interval.total_seconds() / 100))
    now = time.monotonic()
    if now - store.known.audits_looked_at < every:
        return []
    store.known.audits_looked_at = now
    window = min(FIXITY_REENQUEUE_WINDOW, interval.total_seconds())
    due = store.due_for_fixity(interval, window)
    marked = store.mark_fixity_enqueued_many(due) if due else []
    for index, doc in enumerate(marked):
        try:
            enqueue(doc["_id"])
        except Exception:
            try:  # the next pass sends them, not the one after the window
                store.mark_fixity_enqueued_many(marked[index:], sent=False)
            except DfArchiveError as error:
                log.error("audit marks of unsent runs left (sent after the window): %s", error)
            raise
    if marked:
        log.info("%d runs sent for a fixity audit", len(marked))
    return [doc["_id"] for doc in marked]


def enqueue_due(store: RunStore, enqueue: Callable[[str], None], window: float) -> list[str]:
    """Mark every due run in one write, then send a message for each run marked.

    Marking first lets the store decide, run by run, which of several schedulers sends
    (the one whose write wins; sending first would let each send its own). If a send
    fails (the broker is down), the marks of the runs not sent yet are removed in one
    write, so that the next pass sends them instead of waiting out the window; then the
    error is raised. Costs two requests (the pending runs, the marks) plus one on failure.
    """
    due = store.due_for_enqueue(window)
    marked = store.mark_enqueued_many(due) if due else []
    for index, doc in enumerate(marked):
        try:
            enqueue(doc["_id"])
        except Exception:
            _unmark(store, marked[index:])
            raise
    return [doc["_id"] for doc in marked]


def _unmark(store: RunStore, unsent: list[RunDocument]) -> None:
    """Remove the marks of runs whose message was not sent (those changed meanwhile,
    e.g. claimed by a worker on an older message, are left as they are)."""
    try:
        cleared = store.unmark_enqueued_many(unsent)
    except DfArchiveError as error:
        log.error(
            "%d runs not sent stay marked, sent again after the re-enqueue window: %s",
            len(unsent),
            error,
        )
    else:
        log.warning("%d runs not sent; the next pass sends them", len(cleared))


def register_found(store: RunStore, runs: list[NewRun], *, worker_id: str) -> list[str]:
    """Register the complete run folders the store does not know; return the new ids.

    Logs (every pass, never silently) the folders that will not be archived because
    the store holds their run id for another folder, or in a state dfarchive does not
    know. Costs one read of the documents not known to match (all of them on a
    store handle's first pass, and on every pass for a store without a change log), one
    bulk insert if some runs are new, and one request for the change log if any.

    The documents found to match their folders are kept in ``store.known``, and read
    again only when the store's change log reports them changed (re-reading every
    known run on every pass was most of a pass's cost on CouchDB).
    """
    known = store.known
    changes = store.changed_since(known.mark)  # before reading: later changes come next time
    known.mark = changes.mark
    if changes.ids is None:
        known.matched.clear()
    else:
        for run_id in changes.ids:
            known.matched.pop(run_id, None)
    todo = [run for run in runs if known.matched.get(run.run_id) != run.path]
    stored = store.get_many(run.run_id for run in todo) if todo else {}
    new = [run for run in todo if run.run_id not in stored]
    registered = store.register_many(new, worker_id=worker_id) if new else []
    for run in todo:
        doc = stored.get(run.run_id)
        if doc is not None and _archivable(run, doc):
            known.matched[run.run_id] = run.path
    return registered


def _archivable(run: NewRun, doc: RunDocument) -> bool:
    """Whether ``doc`` is ``run``'s document in a state dfarchive knows; logs why not."""
    stored_path = doc.get("path")
    if not isinstance(stored_path, str) or (
        os.path.normpath(stored_path) != os.path.normpath(run.path)
    ):
        log.error(
            "not archiving %r: run id %r is registered for %r (status %r); "
            "run ids must be unique",
            run.path,
            run.run_id,
            doc.get("path"),
            doc.get("status"),
        )
        return False
    if doc.get("status") not in runstate.STATUSES:
        log.error(
            "[%s] not archived: its document has status %r, which dfarchive does not "
            "know (see dfarchive show %s)",
            run.run_id,
            doc.get("status"),
            run.run_id,
        )
        return False
    return True


#: Errors after which the next pass may well succeed: the store or broker unreachable.
TRANSIENT_ERRORS = (StoreUnavailable, BrokerError)


@dataclass(frozen=True)
class PassErrors:
    """The error policy of a loop of scheduling passes (the scheduler's, the local
    loop's): an error that ends only the pass is logged, and the next pass, one
    ``scan_interval`` later, tries again; any other error ends the loop (raised).

    A transient error (:data:`TRANSIENT_ERRORS`) always ends only the pass. Any other
    dfarchive error ends only the pass if ``failed`` is set (the scheduler), and the
    loop if not (the local loop: its runs in progress finish, then it stops).
    """

    log: logging.Logger  # the loop's own logger
    retrying: str  # logged, with the error, for a transient error
    failed: str | None = None  # logged, with the error, for any other; None: raised

    def ends_pass(self, error: DfArchiveError) -> bool:
        """Log ``error`` if it ends only the pass and return True; False: raise it."""
        if isinstance(error, TRANSIENT_ERRORS):
            self.log.error("%s: %s", self.retrying, error)
            return True
        if self.failed is not None:
            self.log.error("%s: %s", self.failed, error)
            return True
        return False


SCHEDULER_ERRORS = PassErrors(
    log=log,
    retrying="scheduling pass failed, retrying next interval",
    failed="scheduling pass failed",
)


def run_scheduler(
    config: Config, *, once: bool = False, stop: SignalSafeEvent | None = None
) -> int:
    """``dfarchive scheduler``: schedule passes every ``scan_interval`` until stopped.

    ``stop`` is set by the caller's signal handlers, hence not a ``threading.Event``.
    """
    from dfarchive.service.messaging import (
        connected_broker,
        enqueue_archive,
        enqueue_fixity,
        required_broker_url,
    )
    from dfarchive.service.startup import open_checked_store, worker_id

    url = required_broker_url(
        config,
        "the scheduler feeds dramatiq workers through RabbitMQ (without a broker, run "
        "dataflow_archive instead)",
    )
    store = open_checked_store(config)
    try:
        broker = connected_broker(url)
    except BrokerError as error:
        store.close()
        raise StartupError(f"{config.source}: broker_url: {error}") from None
    stop = stop or SignalSafeEvent()
    me = worker_id()
    try:
        while True:
            try:
                report = schedule_pass(
                    store,
                    config,
                    worker_id=me,
                    enqueue=lambda run: enqueue_archive(broker, run),
                    enqueue_audit=lambda run: enqueue_fixity(broker, run),
                )
                log.info(
                    "pass: %d complete runs, %d new, %d reclaimed, %d enqueued, %d audits sent",
                    report.found,
                    len(report.registered),
                    len(report.reclaimed),
                    len(report.enqueued),
                    len(report.audits),
                )
            except DfArchiveError as error:
                if not SCHEDULER_ERRORS.ends_pass(error):
                    raise
                if once:
                    return 1
            if once or stop.wait(config.scan_interval):
                return 0
    finally:
        broker.close()
        store.close()
