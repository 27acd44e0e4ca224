"""The all-in-one loop of ``dataflow_archive``: scan, claim and archive on this host.

Up to ``concurrency`` runs are archived at once on a thread pool; a long run never
keeps a free slot from starting the next pending run. Every ``scan_interval`` (or as
soon as a slot frees) a scheduling pass registers new runs, reclaims expired leases
and fills the free slots.

Stopping follows the original tool: :meth:`LocalArchiver.stop` (first Ctrl+C,
SIGTERM) takes nothing new and lets the runs in progress finish;
:meth:`LocalArchiver.stop_now` (second Ctrl+C) cancels them: children stopped,
partial files removed, runs released to pending uncounted. Both are called from
signal handlers, so they only set lock-free events (:mod:`dfarchive.plumbing.sigsafe`); the
loop on the main thread does the rest, logging included. An error that ends the loop
(a store error that is not transient) stops it like the first Ctrl+C: the runs in
progress finish, and a second Ctrl+C still cancels them.

With ``fixity_interval_days`` set, the loop also audits (:mod:`dfarchive.coordination.fixity`): one
due run at a time, on a thread of its own, and only while no run is pending or being
archived here; an audit stops (nothing recorded) when a run becomes pending, or when
the loop stops.

While the recipient key is unusable (:class:`~dfarchive.coordination.attempt.RecipientGate`), the
loop keeps scheduling but claims nothing; it checks the key again every
``scan_interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property, partial

from dfarchive.archiving.keys import Recipient
from dfarchive.coordination import fixity, runstate
from dfarchive.coordination.attempt import (
    AttemptObserver,
    AttemptOutcome,
    RecipientGate,
    attempt_run,
)
from dfarchive.errors import Cancelled, DfArchiveError, Yielded
from dfarchive.ops.verify import recipient_key_lister
from dfarchive.plumbing.sigsafe import SignalSafeEvent
from dfarchive.service.audit import AuditSettings, audit_and_record
from dfarchive.service.scheduler import FIXITY_PASS_SECONDS, PassErrors, schedule_pass
from dfarchive.service.startup import Runtime

log = logging.getLogger(__name__)

#: Only a transient error ends just a pass; any other ends the loop (see PassErrors).
PASS_ERRORS = PassErrors(log=log, retrying="store unreachable, retrying next pass")


@dataclass
class _Active:
    future: Future
    cancel: threading.Event


class LocalArchiver:
    def __init__(
        self, runtime: Runtime[Recipient], *, observers: Sequence[AttemptObserver] = ()
    ) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.observers = tuple(observers)
        self.active: dict[str, _Active] = {}
        self.outcomes: dict[str, AttemptOutcome] = {}
        self._started = 0  # attempts submitted so far
        self._deferred_until: dict[str, float] = {}  # no space: wait a scan interval
        self.stopping = SignalSafeEvent()
        self.immediate = SignalSafeEvent()
        self._wakeup = SignalSafeEvent()
        # Re-entrant: a run that ends before add_done_callback() is reached (a skipped
        # claim takes milliseconds) has _done() called at once, inside _pass()'s lock.
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.concurrency, thread_name_prefix="archive"
        )
        self._audit: _Active | None = None
        self._due: list[str] = []  # runs found due for an audit, in due order
        self._looked = -float("inf")  # when the encrypted runs were last read for them
        self._audit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    @cached_property
    def gate(self) -> RecipientGate:
        """Closed while the recipient key is unusable: no new runs are claimed."""
        return RecipientGate(
            self.runtime.recipient,
            gnupg_home=self.config.gnupg_home,
            recheck_seconds=self.config.scan_interval,
        )

    # -- control (called from signal handlers: set lock-free events, nothing else) -----

    def stop(self) -> None:
        """Graceful: take no new runs, finish those in progress."""
        self.stopping.set()
        self._wakeup.set()

    def stop_now(self) -> None:
        """Immediate: cancel the runs in progress (released uncounted)."""
        self.immediate.set()
        self.stop()

    # -- the loop ---------------------------------------------------------------------

    def run(self, *, once: bool = False) -> bool:
        """Loop until stopped (or, with ``once``, until one full pass is done).

        Returns True if every run attempted ended encrypted (runs another worker took
        meanwhile don't count against it).
        """
        try:
            while not self.stopping.is_set():
                started = self._started
                self._pass(once=once)
                # quick attempts (a refused claim) may all be over already: once is
                # done only when a pass finds nothing more to start
                if once and not self.active and self._started == started:
                    break
                self._wakeup.wait(1.0 if once else self.config.scan_interval)
                self._wakeup.clear()
        except BaseException as error:
            log.error("stopping after %s: %s", type(error).__name__, error)
            self.stop()  # take nothing new; a second Ctrl+C must still cancel
            raise
        finally:
            try:
                self._stop_audit()
                self._drain()
            finally:
                self._pool.shutdown(wait=True)
        return all(
            outcome in (AttemptOutcome.ENCRYPTED, AttemptOutcome.SKIPPED)
            for outcome in self.outcomes.values()
        )

    def _pass(self, *, once: bool) -> None:
        store = self.runtime.store
        try:
            schedule_pass(store, self.config, worker_id=self.runtime.worker_id)
            pending = store.runs(runstate.PENDING)
        except DfArchiveError as error:
            if PASS_ERRORS.ends_pass(error):
                return
            raise
        if not pending and not once:
            self._maybe_audit()
        if pending and not self.gate.is_open():
            return  # logged by the gate, once
        for doc in pending:
            run_id = doc["_id"]
            with self._lock:
                if self.stopping.is_set() or len(self.active) >= self.config.concurrency:
                    return
                if run_id in self.active or (once and run_id in self.outcomes):
                    continue
                if self._deferred_until.get(run_id, 0.0) > time.monotonic():
                    continue
                self._start(run_id)

    def _start(self, run_id: str) -> None:
        cancel = threading.Event()
        future = self._pool.submit(
            attempt_run,
            self.runtime.store,
            run_id,
            worker_id=self.runtime.worker_id,
            settings=self.runtime.settings,
            recipient=self.runtime.recipient,
            sequencing_path=self.config.sequencing_path,
            cancel=cancel,
            observers=self.observers,
            gate=self.gate,
        )
        self.active[run_id] = _Active(future, cancel)
        self._started += 1
        future.add_done_callback(partial(self._done, run_id))

    def _done(self, run_id: str, future: Future[AttemptOutcome]) -> None:
        with self._lock:
            self.active.pop(run_id, None)
            error = future.exception()
            outcome = AttemptOutcome.FAILED if error else future.result()
            if error:
                log.error("[%s] attempt crashed: %r", run_id, error)
            self.outcomes[run_id] = outcome
            if outcome is AttemptOutcome.DEFERRED:
                self._deferred_until[run_id] = time.monotonic() + self.config.scan_interval
        self._wakeup.set()

    # -- fixity audits ----------------------------------------------------------------

    @cached_property
    def audit_settings(self) -> AuditSettings:
        home = self.config.gnupg_home
        return AuditSettings(
            limiter=fixity.RateLimiter(self.config.fixity_max_rate * fixity.MB),
            recipient_keys=recipient_key_lister(str(home) if home else None),
            host=self.runtime.worker_id,
        )

    def _maybe_audit(self) -> None:
        """Start the next due audit if audits are on and nothing else is going on."""
        if self.config.fixity_interval_days <= 0:
            return
        with self._lock:
            if self.stopping.is_set() or self.active or self._audit is not None:
                return
            doc = self._next_due()
            if doc is None:
                return
            cancel = threading.Event()
            future = self._audit_pool.submit(
                audit_and_record,
                self.runtime.store,
                doc,
                self.audit_settings,
                yield_to_archiving=True,
                cancel=cancel,
            )
            self._audit = _Active(future, cancel)
        future.add_done_callback(partial(self._audited, doc["_id"]))

    def _next_due(self) -> runstate.RunDocument | None:
        """The next run due for an audit (the encrypted runs are read again when the
        list runs out, at most every FIXITY_PASS_SECONDS or hundredth of the interval)."""
        store, interval = self.runtime.store, timedelta(days=self.config.fixity_interval_days)
        if not self._due:
            every = max(
                self.config.scan_interval,
                min(FIXITY_PASS_SECONDS, interval.total_seconds() / 100),
            )
            if time.monotonic() - self._looked < every:
                return None
            self._looked = time.monotonic()
            due = store.due_for_fixity(interval, window_seconds=0)
            due.sort(key=lambda doc: fixity.due_order(doc, interval))
            self._due = [doc["_id"] for doc in due]
        while self._due:
            doc = store.get(self._due.pop(0))
            if doc is not None and fixity.is_due(doc, store.clock(), interval):
                return doc
        return None

    def _audited(self, run_id: str, future: Future) -> None:
        error = future.exception()
        with self._lock:
            self._audit = None
            if isinstance(error, Yielded | Cancelled):
                self._due.insert(0, run_id)  # first again once archiving is done
        if isinstance(error, Yielded | Cancelled):
            log.info("[%s] audit stopped, nothing recorded: %s", run_id, error)
        elif isinstance(error, DfArchiveError):
            log.error("[%s] audit abandoned: %s", run_id, error)
        elif error is not None:
            log.error("[%s] audit crashed: %r", run_id, error)
        else:
            check, _ = future.result()
            if check.result == fixity.OK:
                log.info("[%s] fixity ok (%.1f s)", run_id, check.seconds)
            else:
                log.error("[%s] fixity %s: %s", run_id, check.result, check.reason)
        self._wakeup.set()

    def _stop_audit(self) -> None:
        with self._lock:
            audit = self._audit
        if audit is not None:
            audit.cancel.set()
        self._audit_pool.shutdown(wait=True)

    def _drain(self) -> None:
        """Wait for the runs in progress; cancel them once :meth:`stop_now` is called."""
        cancelled = False
        with self._lock:
            if self.stopping.is_set() and not self.immediate.is_set():
                log.warning(
                    "stopping: finishing %d run(s) in progress (Ctrl+C again to stop now)",
                    len(self.active),
                )
        while True:
            with self._lock:
                if not self.active:
                    return
                if self.immediate.is_set() and not cancelled:
                    log.warning("stopping now: cancelling %d run(s) in progress", len(self.active))
                    for active in self.active.values():
                        active.cancel.set()
                    cancelled = True
            self._wakeup.wait(1.0)  # a run ending, stop_now(), or a look every second
            self._wakeup.clear()
