"""Keep a claim alive while a run is archived, and notice when it is lost.

A background thread renews the lease (heartbeat) every ``interval`` seconds and writes
the latest progress into the run document. If the store says the run is no longer
ours (reclaimed after a long pause, or released by an operator), the keeper sets
``cancel`` so the pipeline stops and cleans up; the caller then leaves the document
alone.

A worker cut off from the store fences itself: each heartbeat request waits only a
fraction of the lease (:func:`dfarchive.plumbing.timeouts.heartbeat_timeout`), and a watchdog
thread, which never touches the network, sets ``cancel`` once the lease could run out
before the next renewal (:func:`dfarchive.plumbing.timeouts.fence_after`), whether or not a
heartbeat is still hanging and whether or not the network comes back. Another host may
then take the run over; this one has stopped writing by then.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dfarchive.coordination.runstate import timestamp
from dfarchive.coordination.store.base import Claim, RunStore, utc_now
from dfarchive.errors import Cancelled, ClaimLost, StoreError, StoreUnavailable
from dfarchive.plumbing.timeouts import fence_after, heartbeat_timeout

log = logging.getLogger(__name__)

#: Progress reaches the document at least this often, whatever the lease length.
MAX_HEARTBEAT_INTERVAL = 30.0


class LeaseKeeper:
    """Heartbeats for one claim on a daemon thread. Use as a context manager."""

    def __init__(self, store: RunStore, claim: Claim, cancel: threading.Event) -> None:
        self.store = store
        self.claim = claim
        self.cancel = cancel
        self.interval = min(store.lease_seconds / 3, MAX_HEARTBEAT_INTERVAL)
        self.request_timeout = heartbeat_timeout(store.lease_seconds)
        self.fence_after = fence_after(store.lease_seconds)
        self.lost = False
        self.fenced: str | None = None  # why the watchdog stopped the attempt, if it did
        self._stop = threading.Event()
        self._progress: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._last_renewed = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{claim.run_id}", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch, name=f"fence-{claim.run_id}", daemon=True
        )

    def update_progress(self, done: int, total: int) -> None:
        """Record progress; it reaches the document with the next heartbeat."""
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._progress = {
            "bytes_done": done,
            "bytes_total": total,
            "rate": round(done / elapsed),
            "updated_at": timestamp(utc_now()),
        }

    def confirm(self) -> None:
        """Renew now, before publishing; a store that does not answer is retried until
        the watchdog fences. Raises ClaimLost if the run is no longer ours, Cancelled if
        the attempt was cancelled meanwhile."""
        while not self.cancel.is_set():
            try:
                if self._renew():
                    return
                self._lose("the claim was lost before publishing")
            except StoreUnavailable as error:
                log.warning("[%s] renewal before publishing failed: %s", self.claim.run_id, error)
                self.cancel.wait(self.interval)
        if self.lost:
            raise ClaimLost(f"run {self.claim.run_id!r} is no longer held by this worker")
        raise Cancelled(f"run {self.claim.run_id!r}: cancelled before publishing")

    def _lose(self, why: str) -> None:
        if not self.lost:
            log.warning("[%s] %s; abandoning this attempt", self.claim.run_id, why)
        self.lost = True
        self.cancel.set()

    def _renew(self) -> bool:
        """One bounded heartbeat; False if the run is no longer ours. The lease then
        runs from no earlier than the request's start, so that is the renewal time."""
        started = time.monotonic()
        with self.store.bounded(self.request_timeout):
            if not self.store.heartbeat(self.claim, self._progress):
                return False
        self._last_renewed = max(self._last_renewed, started)
        return True

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())) and not self.cancel.is_set():
            started = time.monotonic()
            due = started + self.interval / 2  # after a failure, retry twice as often
            try:
                if not self._renew():
                    self._lose("the run was taken over (lease reclaimed or released)")
                    return
                due = started + self.interval
            except StoreUnavailable as error:
                log.warning("[%s] heartbeat failed: %s", self.claim.run_id, error)
            except StoreError as error:
                log.error("[%s] heartbeat failed: %s", self.claim.run_id, error)

    def _watch(self) -> None:
        """Fence: stop the attempt once it is too late to renew the lease.

        The run is not lost (the store never said so): once the store answers again, the
        caller releases it uncounted, unless it was reclaimed meanwhile."""
        while not self.cancel.is_set():
            silent = time.monotonic() - self._last_renewed
            if silent >= self.fence_after:
                self.fenced = (
                    f"the lease ({self.store.lease_seconds:g} s) was not renewed for "
                    f"{silent:.1f} s (store unreachable) and may run out"
                )
                log.warning("[%s] %s; abandoning this attempt", self.claim.run_id, self.fenced)
                self.cancel.set()
                return
            if self._stop.wait(self.fence_after - silent):
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watchdog.join(timeout=60)
        self._thread.join(timeout=60)
