"""Keep a claim alive while a run is archived, and notice when it is lost.

A background thread renews the lease (heartbeat) every ``interval`` seconds and writes
the latest progress into the run document. If the store says the run is no longer
ours (reclaimed after a long pause, or released by an operator), or the store has been
unreachable for a whole lease period, the keeper sets ``cancel`` so the pipeline stops
and cleans up; the caller then leaves the document alone.

Just before publishing, :meth:`LeaseKeeper.confirm` renews once more on the caller's
thread; a store that is unreachable then is waited for while the lease lasts, never
counted against the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .errors import Cancelled, ClaimLost, StoreError, StoreUnavailable
from .runstate import timestamp
from .store.base import Claim, RunStore, utc_now

log = logging.getLogger(__name__)

#: Progress reaches the document at least this often, whatever the lease length.
MAX_HEARTBEAT_INTERVAL = 30.0
#: First wait before :meth:`LeaseKeeper.confirm` asks an unreachable store again.
CONFIRM_RETRY_FIRST = 0.5


class LeaseKeeper:
    """Heartbeats for one claim on a daemon thread. Use as a context manager."""

    def __init__(self, store: RunStore, claim: Claim, cancel: threading.Event) -> None:
        self.store = store
        self.claim = claim
        self.cancel = cancel
        self.interval = min(store.lease_seconds / 3, MAX_HEARTBEAT_INTERVAL)
        self.lost = False
        self._stop = threading.Event()
        self._progress: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._last_renewed = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{claim.run_id}", daemon=True
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
        """Renew now, the last check before publishing: this thread renews from here on.

        While the store is unreachable, retries until the lease would run out, then
        raises Cancelled (not the run's fault: the caller releases it uncounted).
        Raises ClaimLost if the run is no longer ours.
        """
        self._stop_renewing()
        delay = CONFIRM_RETRY_FIRST
        while not self.lost:
            try:
                renewed = self.store.heartbeat(self.claim, self._progress)
            except StoreUnavailable as error:
                silent = time.monotonic() - self._last_renewed
                left = self.store.lease_seconds - silent
                if left <= 0:
                    raise Cancelled(
                        f"the store was unreachable for {silent:.0f} s just before publishing "
                        f"({error}); the lease ran out, so nothing was published"
                    ) from None
                log.warning(
                    "[%s] store unreachable before publishing (%s); retrying for %.0f s more",
                    self.claim.run_id,
                    error,
                    left,
                )
                if self.cancel.wait(min(delay, left)):
                    return  # the pipeline's own cancel check stops the attempt
                delay = min(delay * 2, self.interval)
                continue
            if renewed:
                self._last_renewed = time.monotonic()
                return
            self._lose("the claim was lost before publishing")
        raise ClaimLost(f"run {self.claim.run_id!r} is no longer held by this worker")

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _lose(self, why: str) -> None:
        if not self.lost:
            log.warning("[%s] %s; abandoning this attempt", self.claim.run_id, why)
        self.lost = True
        self.cancel.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.heartbeat(self.claim, self._progress):
                    self._lose("the run was taken over (lease reclaimed or released)")
                    return
                self._last_renewed = time.monotonic()
            except StoreUnavailable as error:
                silent = time.monotonic() - self._last_renewed
                log.warning("[%s] heartbeat failed: %s", self.claim.run_id, error)
                if silent >= self.store.lease_seconds:
                    self._lose(f"the store was unreachable for {silent:.0f} s")
                    return
            except StoreError as error:
                log.error("[%s] heartbeat failed: %s", self.claim.run_id, error)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
