"""The all-in-one loop of ``dataflow_archive``: scan, claim and archive on this host.

Up to ``concurrency`` runs are archived at once on a thread pool; a long run never
keeps a free slot from starting the next pending run. Every ``scan_interval`` (or as
soon as a slot frees) a scheduling pass registers new runs, reclaims expired leases
and fills the free slots.

Stopping follows the original tool: :meth:`LocalArchiver.stop` (first Ctrl+C,
SIGTERM) takes nothing new and lets the runs in progress finish;
:meth:`LocalArchiver.stop_now` (second Ctrl+C) cancels them: children stopped,
partial files removed, runs released to pending uncounted. Both are called from
signal handlers, so they only set lock-free events (:mod:`dfarchive.sigsafe`); the
loop on the main thread does the rest, logging included. An error that ends the loop
(a store error that is not transient) stops it like the first Ctrl+C: the runs in
progress finish, and a second Ctrl+C still cancels them.

While the recipient key is unusable (:class:`~dfarchive.attempt.RecipientGate`), the
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
from functools import cached_property

from . import runstate
from .attempt import AttemptObserver, Outcome, RecipientGate, attempt_run
from .errors import StoreUnavailable
from .scheduler import schedule_pass
from .sigsafe import SignalSafeEvent
from .startup import Runtime

log = logging.getLogger(__name__)


@dataclass
class _Active:
    future: Future[Outcome]
    cancel: threading.Event


class LocalArchiver:
    def __init__(self, runtime: Runtime, *, observers: Sequence[AttemptObserver] = ()) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.observers = tuple(observers)
        self.active: dict[str, _Active] = {}
        self.outcomes: dict[str, Outcome] = {}
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

    @cached_property
    def gate(self) -> RecipientGate:
        """Closed while the recipient key is unusable: no new runs are claimed."""
        return RecipientGate(
            self.runtime.recipient,  # type: ignore[arg-type]
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
                self._drain()
            finally:
                self._pool.shutdown(wait=True)
        return all(
            outcome in (Outcome.ENCRYPTED, Outcome.SKIPPED) for outcome in self.outcomes.values()
        )

    def _pass(self, *, once: bool) -> None:
        store = self.runtime.store
        try:
            schedule_pass(store, self.config, worker_id=self.runtime.worker_id)
            pending = store.runs(runstate.PENDING)
        except StoreUnavailable as error:
            log.error("store unreachable, retrying next pass: %s", error)
            return
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
            recipient=self.runtime.recipient,  # type: ignore[arg-type]
            sequencing_path=self.config.sequencing_path,
            cancel=cancel,
            observers=self.observers,
            gate=self.gate,
        )
        self.active[run_id] = _Active(future, cancel)
        self._started += 1
        future.add_done_callback(lambda f, run_id=run_id: self._done(run_id, f))

    def _done(self, run_id: str, future: Future[Outcome]) -> None:
        with self._lock:
            self.active.pop(run_id, None)
            error = future.exception()
            outcome = Outcome.FAILED if error else future.result()
            if error:
                log.error("[%s] attempt crashed: %r", run_id, error)
            self.outcomes[run_id] = outcome
            if outcome is Outcome.DEFERRED:
                self._deferred_until[run_id] = time.monotonic() + self.config.scan_interval
        self._wakeup.set()

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
