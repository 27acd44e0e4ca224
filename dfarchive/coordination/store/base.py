"""The run-state store: one interface, the transitions of :mod:`dfarchive.coordination.runstate`.

A backend supplies six primitives (read one, compare-and-swap write one or many,
insert the missing ones in bulk, list by status, set up), and may add a bulk read and a
change log; this base class turns them into the run transitions, each a read → change →
write-if-unchanged loop. A write that loses the race re-reads and decides again;
nothing is ever overwritten blindly.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dfarchive.coordination import fixity, runstate
from dfarchive.coordination.runstate import RunDocument
from dfarchive.errors import ClaimLost, NotClaimable, StoreError, TransitionRefused, UnknownRun

#: Conflicting writes tolerated in one transition before giving up (each one means
#: another writer changed the same document in between; a handful is already unusual).
MAX_CAS_ROUNDS = 20

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewRun:
    """A run folder to register: its id (the folder name), absolute path and sequencer."""

    run_id: str
    path: str
    sequencer: str


@dataclass
class KnownRuns:
    """What the scheduling passes over one store handle learnt about its run documents,
    kept between passes: the documents found to match their folders, trusted until the
    change log since ``mark`` names them (see :meth:`RunStore.changed_since`), and when
    the encrypted runs were last read for due fixity audits."""

    mark: str | None = None  # the store's change mark when last asked
    matched: dict[str, str] = field(default_factory=dict)  # run id → its folder's path
    audits_looked_at: float = -math.inf  # time.monotonic() of the last look for audits


@dataclass(frozen=True)
class Changes:
    """What :meth:`RunStore.changed_since` found.

    ``mark``: where the store's history is now, for the next call (None: no change log).
    ``ids``: the documents written or deleted since the mark given; None when unknown
    (the first call, or no change log): any document may then have changed.
    """

    mark: str | None
    ids: frozenset[str] | None


@dataclass
class LeaseSweep:
    """What :meth:`RunStore.sweep_leases` did and saw."""

    reclaimed: list[str] = field(default_factory=list)  # ids put back to pending
    legacy_held: list[RunDocument] = field(default_factory=list)  # original tool's, live


@dataclass(frozen=True)
class Claim:
    """Proof that this worker holds a run; every later transition presents it."""

    run_id: str
    worker_id: str
    token: str
    path: object = None  # the document's ``path`` as stored (validated by the pipeline)


class RunStore(ABC):
    """Run documents and their transitions, over a backend's compare-and-swap.

    Parameters:
      max_attempts: failures after which a run becomes ``failed``.
      lease_seconds: a claim expires this long after its last heartbeat.
      legacy_lease_seconds: a claim of the original tool (no lease) expires this long
        after its ``updated_at``.
      clock: returns the current time (UTC); injectable for tests.
    """

    backend = "abstract"

    def __init__(
        self,
        *,
        max_attempts: int = runstate.DEFAULT_MAX_ATTEMPTS,
        lease_seconds: float = runstate.DEFAULT_LEASE_SECONDS,
        legacy_lease_seconds: float = runstate.DEFAULT_LEGACY_LEASE_SECONDS,
        clock: Clock = utc_now,
    ) -> None:
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.legacy_lease_seconds = legacy_lease_seconds
        self.clock = clock
        #: Owned by whoever holds this handle (a loop): a new handle, like a new
        #: process, knows nothing yet.
        self.known = KnownRuns()

    # -- backend primitives -------------------------------------------------------

    @abstractmethod
    def setup(self) -> None:
        """Create the database, tables, design documents; idempotent.

        Raises: StoreUnavailable, StoreAuthError, StoreError.
        """

    @abstractmethod
    def get(self, run_id: str) -> RunDocument | None:
        """The stored document (with ``_rev``), or None if there is none."""

    @abstractmethod
    def runs(self, status: str | None = None) -> list[RunDocument]:
        """All run documents, or those with the given status, ordered by id."""

    def get_many(self, run_ids: Iterable[str]) -> dict[str, RunDocument]:
        """The stored documents of those of ``run_ids`` that exist, by id.

        Backends may override this with one request whatever the number of ids.
        """
        found = {}
        for run_id in run_ids:
            doc = self.get(run_id)
            if doc is not None:
                found[run_id] = doc
        return found

    def changed_since(self, mark: str | None) -> Changes:
        """The ids of the documents written or deleted since ``mark`` (a mark an earlier
        call returned), and a new mark; lets a caller keep what it read between passes.

        A change made after this call returns is reported by the next call. This
        default keeps no change log: every answer is "unknown". Backends with a cheap
        change log override it (one request).
        """
        return Changes(mark=None, ids=None)

    @abstractmethod
    def _replace(self, doc: RunDocument) -> RunDocument | None:
        """Write ``doc`` if the stored ``_rev`` still equals ``doc["_rev"]``.

        Returns the stored document with its new ``_rev``, or None on a conflict.
        """

    @abstractmethod
    def _replace_many(self, docs: list[RunDocument]) -> list[RunDocument]:
        """Write each of ``docs`` whose stored ``_rev`` still equals its ``_rev``.

        Returns the documents written, with their new ``_rev``; a conflict skips that
        document only. A bounded number of requests whatever ``len(docs)`` is.
        """

    @abstractmethod
    def _insert_missing(self, docs: list[RunDocument]) -> list[str]:
        """Insert the documents whose ids are not stored yet; return the ids inserted.

        A bounded number of requests whatever ``len(docs)`` is.
        """

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release connections. The store is unusable afterwards."""

    def bounded(self, seconds: float) -> contextlib.AbstractContextManager[None]:
        """Network calls this thread makes inside the block wait at most about
        ``seconds`` each, without retries (heartbeats). A no-op for local stores."""
        return contextlib.nullcontext()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transitions ----------------------------------------------------------------

    def register_many(self, runs: Iterable[NewRun], *, worker_id: str) -> list[str]:
        """Register the runs not known yet as ``pending``; idempotent. Returns new ids.

        Ids stored already, or registered by another writer meanwhile, are left alone
        and not returned. Callers that know which runs are new pass only those: every
        run passed is sent to the backend.
        """
        now = self.clock()
        docs = [
            runstate.new_run(
                run.run_id, path=run.path, sequencer=run.sequencer, worker_id=worker_id, now=now
            )
            for run in runs
        ]
        return self._insert_missing(docs) if docs else []

    def claim(self, run_id: str, *, worker_id: str, claimed_by: str | None = None) -> Claim | None:
        """Take a pending run. Exactly one of several concurrent callers wins.

        ``worker_id`` is the host name (the original schema's meaning), ``claimed_by``
        the process and thread (see :func:`runstate.claim`). Returns the claim, or None
        if the run is not pending (another worker holds it, it is done, or it has
        failed). Raises UnknownRun if there is no such run.
        """
        token = uuid.uuid4().hex
        try:
            doc = self._update(
                run_id,
                lambda doc: runstate.claim(
                    doc,
                    worker_id=worker_id,
                    token=token,
                    now=self.clock(),
                    lease_seconds=self.lease_seconds,
                    claimed_by=claimed_by,
                ),
            )
        except NotClaimable:
            return None
        return Claim(run_id=run_id, worker_id=worker_id, token=token, path=doc.get("path"))

    def heartbeat(self, claim: Claim, progress: Mapping[str, Any] | None = None) -> bool:
        """Extend the lease (and record progress). False if the run is no longer ours."""
        try:
            self._update(
                claim.run_id,
                lambda doc: runstate.heartbeat(
                    doc,
                    token=claim.token,
                    now=self.clock(),
                    lease_seconds=self.lease_seconds,
                    progress=progress,
                ),
            )
        except (ClaimLost, UnknownRun):
            return False
        return True

    def finish(self, claim: Claim, archive: Mapping[str, Any]) -> RunDocument:
        """processing → encrypted. Raises ClaimLost if the run is no longer ours."""
        return self._update(
            claim.run_id,
            lambda doc: runstate.finish(doc, token=claim.token, now=self.clock(), archive=archive),
        )

    def fail(self, claim: Claim, error: str) -> RunDocument:
        """Count a failure: back to pending, or failed at ``max_attempts``."""
        return self._update(
            claim.run_id,
            lambda doc: runstate.fail(
                doc,
                token=claim.token,
                now=self.clock(),
                error=error,
                max_attempts=self.max_attempts,
            ),
        )

    def fail_for_good(self, claim: Claim, error: str) -> RunDocument:
        """processing → failed at once, whatever ``failure_count`` says."""
        return self._update(
            claim.run_id,
            lambda doc: runstate.fail_for_good(
                doc, token=claim.token, now=self.clock(), error=error
            ),
        )

    def release(self, claim: Claim, reason: str, *, error: bool = False) -> RunDocument:
        """Back to pending, not counted (shutdown, cancellation, no space); with
        ``error`` the reason is recorded as ``last_error``."""
        return self._update(
            claim.run_id,
            lambda doc: runstate.release(
                doc, token=claim.token, now=self.clock(), reason=reason, error=error
            ),
        )

    def reclaim_expired(self) -> list[str]:
        """Put runs whose lease ran out back to pending (counted). Returns their ids."""
        return self.sweep_leases().reclaimed

    def sweep_leases(self) -> LeaseSweep:
        """:meth:`reclaim_expired`, also returning the original tool's live claims."""
        sweep = LeaseSweep()
        now = self.clock()
        processing = self.runs(runstate.PROCESSING)
        sweep.legacy_held.extend(
            runstate.legacy_held(
                processing, now=now, legacy_lease_seconds=self.legacy_lease_seconds
            )
        )
        for doc in processing:
            if not runstate.lease_expired(doc, now, self.legacy_lease_seconds):
                continue
            try:
                self._update(
                    doc["_id"],
                    lambda d: runstate.reclaim_expired(
                        d,
                        now=self.clock(),
                        max_attempts=self.max_attempts,
                        legacy_lease_seconds=self.legacy_lease_seconds,
                    ),
                )
            except (TransitionRefused, UnknownRun):
                continue  # renewed or reclaimed by someone else in between
            sweep.reclaimed.append(doc["_id"])
        return sweep

    def retry(self, run_id: str) -> RunDocument:
        """Operator action: failed → pending with the count reset."""
        return self._update(run_id, lambda doc: runstate.retry(doc, now=self.clock()))

    def force_release(self, run_id: str) -> RunDocument:
        """Operator action: processing → pending, not counted, whatever the lease says."""
        return self._update(run_id, lambda doc: runstate.force_release(doc, now=self.clock()))

    def adopt(self, run_id: str, record: Mapping[str, Any]) -> RunDocument:
        """Operator action: an encrypted run without an archive record gets ``record``
        (see :func:`dfarchive.coordination.runstate.adopt`). Raises TransitionRefused otherwise."""
        now = self.clock()  # once: a retried write must find the very record it wrote
        return self._update(run_id, lambda doc: runstate.adopt(doc, record=record, now=now))

    def due_for_enqueue(self, window_seconds: float) -> list[RunDocument]:
        """Pending runs whose last message is older than ``window_seconds`` (or never sent)."""
        now = self.clock()
        return [
            doc
            for doc in self.runs(runstate.PENDING)
            if runstate.due_for_enqueue(doc, now=now, window_seconds=window_seconds)
        ]

    def mark_enqueued(self, doc: RunDocument) -> bool:
        """Record a message for this run, if ``doc`` is still current.

        False when the document changed since it was read (another scheduler marked it,
        or a worker claimed it): the caller then does not send a message.
        """
        return bool(self.mark_enqueued_many([doc]))

    def mark_enqueued_many(self, docs: Iterable[RunDocument]) -> list[RunDocument]:
        """Record a message for each run whose document is still as read, in one write.

        Returns the documents marked, as now stored (new ``_rev``): the caller sends a
        message for these only. A run no longer pending, or whose document changed since
        it was read (another scheduler marked it, a worker claimed it), is skipped.
        """
        now = self.clock()
        return self._change_many(docs, lambda doc: runstate.mark_enqueued(doc, now=now))

    def unmark_enqueued_many(self, marked: Iterable[RunDocument]) -> list[str]:
        """Undo :meth:`mark_enqueued_many` for runs whose message was not sent, in one
        write, so that the next pass sends them instead of waiting out the window.

        ``marked``: documents as :meth:`mark_enqueued_many` returned them; one changed
        since (a worker claimed it) is left alone. Returns the ids unmarked.
        """
        cleared = [{**doc, "enqueued_at": None} for doc in marked]
        return [doc["_id"] for doc in self._replace_many(cleared)] if cleared else []

    # -- fixity audits (dfarchive.coordination.fixity) -------------------------------------------

    def record_fixity(self, run_id: str, check: Mapping[str, Any]) -> RunDocument:
        """Record an audit's outcome (:func:`runstate.record_fixity`). A concurrent
        write to the document only makes this re-read and record again.

        Raises: UnknownRun; TransitionRefused if the run is no longer encrypted.
        """
        return self._update(run_id, lambda doc: runstate.record_fixity(doc, check=check))

    def due_for_fixity(self, interval: timedelta, window_seconds: float) -> list[RunDocument]:
        """Encrypted runs due for an audit whose last audit message (if any) is older
        than ``window_seconds``. One read of the encrypted runs."""
        now = self.clock()
        window = timedelta(seconds=window_seconds)
        due = []
        for doc in self.runs(runstate.ENCRYPTED):
            if not fixity.is_due(doc, now, interval):
                continue
            sent = runstate.parse_timestamp(doc.get("fixity_enqueued_at"))
            if sent is None or now - sent >= window:
                due.append(doc)
        return due

    def mark_fixity_enqueued_many(
        self, docs: Iterable[RunDocument], *, sent: bool = True
    ) -> list[RunDocument]:
        """Record (``sent``) or remove an audit message's mark for each run whose
        document is still as read, in one write; returns those written."""
        now = self.clock() if sent else None
        return self._change_many(docs, lambda doc: runstate.mark_fixity_enqueued(doc, now=now))

    # -- the compare-and-swap loop ------------------------------------------------

    def _change_many(
        self, docs: Iterable[RunDocument], change: Callable[[RunDocument], RunDocument]
    ) -> list[RunDocument]:
        """Apply ``change`` to each of ``docs`` as read (skipping those it refuses with
        TransitionRefused) and write them in one request; returns those written (a
        document changed since it was read is not)."""
        changed = []
        for doc in docs:
            try:
                changed.append(change(doc))
            except TransitionRefused:
                continue
        return self._replace_many(changed) if changed else []

    def _update(self, run_id: str, change: Callable[[RunDocument], RunDocument]) -> RunDocument:
        """Apply ``change`` to the current document until a write wins.

        ``change`` raises TransitionRefused to refuse, or returns its argument itself
        to say "already so, nothing to write".
        """
        for attempt in range(MAX_CAS_ROUNDS):
            doc = self.get(run_id)
            if doc is None:
                raise UnknownRun(f"no run {run_id!r} in the {self.backend} store")
            changed = change(doc)
            if changed is doc:
                return doc
            stored = self._replace(changed)
            if stored is not None:
                return stored
            # Jittered backoff: writers that keep colliding on one document spread out
            # instead of starving one another.
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        raise StoreError(
            f"run {run_id!r}: gave up after {MAX_CAS_ROUNDS} conflicting writes in a row"
        )
