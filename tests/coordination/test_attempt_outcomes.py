"""The seven outcomes of ``attempt_run``, one test each, on an in-memory store.

:class:`MemoryStore` supplies only the backend primitives of
:class:`~dfarchive.coordination.store.base.RunStore` (the transitions are the real ones)
and logs which transition the attempt asked for, so each test pins three things: the
outcome returned, the transition that recorded it, and the document it left. The
pipeline is a stand-in (``attempt.archive_run``) and the recipient check is stubbed:
the decision is what is under test. tests/coordination/test_attempt.py drives the same
outcomes on a real SQLite store, plus the checks before the work and the real pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from dfarchive.archiving.keys import Recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination import attempt
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.runstate import RunDocument
from dfarchive.coordination.store.base import Claim, NewRun, RunStore
from dfarchive.errors import Cancelled, OutOfSpace, RecipientError, ToolError

RUN_ID = "run_1"
RECIPIENT = Recipient(fingerprint="F" * 40, uid="test", expires=None)
RECORD = {"file": "/archives/run_1.tar.gpg", "size": 1}
#: The transitions that end an attempt (or start it); heartbeats are left out of the
#: log, their number depends on timing.
LOGGED = ("claim", "finish", "fail", "fail_for_good", "release")


class MemoryStore(RunStore):
    """Run documents in a dict, with a revision counter for compare-and-swap."""

    backend = "memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.docs: dict[str, RunDocument] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def setup(self) -> None:
        pass

    def get(self, run_id: str) -> RunDocument | None:
        doc = self.docs.get(run_id)
        return copy.deepcopy(doc) if doc is not None else None

    def runs(self, status: str | None = None) -> list[RunDocument]:
        return [
            copy.deepcopy(doc)
            for _, doc in sorted(self.docs.items())
            if status is None or doc["status"] == status
        ]

    def _replace(self, doc: RunDocument) -> RunDocument | None:
        stored = self.docs.get(doc["_id"])
        if stored is None or stored["_rev"] != doc.get("_rev"):
            return None
        self.docs[doc["_id"]] = {**copy.deepcopy(doc), "_rev": stored["_rev"] + 1}
        return self.get(doc["_id"])

    def _replace_many(self, docs: list[RunDocument]) -> list[RunDocument]:
        return [stored for doc in docs if (stored := self._replace(doc)) is not None]

    def _insert_missing(self, docs: list[RunDocument]) -> list[str]:
        new = [doc for doc in docs if doc["_id"] not in self.docs]
        for doc in new:
            self.docs[doc["_id"]] = {**copy.deepcopy(doc), "_rev": 1}
        return [doc["_id"] for doc in new]

    # -- the transitions attempt_run asks for, logged ---------------------------------

    def claim(self, run_id: str, *, worker_id: str, claimed_by: str | None = None) -> Claim | None:
        self.calls.append(("claim", {"worker_id": worker_id}))
        return super().claim(run_id, worker_id=worker_id, claimed_by=claimed_by)

    def finish(self, claim: Claim, archive: Mapping[str, Any]) -> RunDocument:
        self.calls.append(("finish", {}))
        return super().finish(claim, archive)

    def fail(self, claim: Claim, error: str) -> RunDocument:
        self.calls.append(("fail", {"error": error}))
        return super().fail(claim, error)

    def fail_for_good(self, claim: Claim, error: str) -> RunDocument:
        self.calls.append(("fail_for_good", {"error": error}))
        return super().fail_for_good(claim, error)

    def release(self, claim: Claim, reason: str, *, error: bool = False) -> RunDocument:
        self.calls.append(("release", {"reason": reason, "error": error}))
        return super().release(claim, reason, error=error)

    def transitions(self) -> list[str]:
        return [name for name, _ in self.calls if name in LOGGED]


@pytest.fixture
def seq(tmp_path: Path) -> Path:
    (tmp_path / "seq" / "seqA" / RUN_ID).mkdir(parents=True)
    return tmp_path / "seq"


@pytest.fixture
def store(seq: Path) -> MemoryStore:
    store = MemoryStore(lease_seconds=60)
    store.register_many([NewRun(RUN_ID, str(seq / "seqA" / RUN_ID), "seqA")], worker_id="h")
    return store


@pytest.fixture
def settings(tmp_path: Path) -> ArchiveSettings:
    return ArchiveSettings(destination_path=tmp_path / "archives", keys_path=tmp_path / "keys")


@pytest.fixture(autouse=True)
def recipient_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempt, "check_recipient", lambda recipient, gnupg_home: None)


def pipeline(monkeypatch: pytest.MonkeyPatch, body: Callable[[Callable[[], None]], dict]) -> None:
    """The pipeline becomes ``body(before_publish)``."""

    def fake(run_id, run_path, settings, recipient, *, progress, cancel, before_publish):
        return body(before_publish)

    monkeypatch.setattr(attempt, "archive_run", fake)


def raising(error: BaseException) -> Callable[[Callable[[], None]], dict]:
    def body(before_publish: Callable[[], None]) -> dict:
        raise error

    return body


def attempt_it(store: MemoryStore, settings: ArchiveSettings, seq: Path) -> AttemptOutcome:
    return attempt_run(
        store,
        RUN_ID,
        worker_id="host-a",
        settings=settings,
        recipient=RECIPIENT,
        sequencing_path=seq,
    )


def test_encrypted_finishes_the_run_with_its_record(store, settings, seq, monkeypatch):
    def body(before_publish):
        before_publish()
        return RECORD

    pipeline(monkeypatch, body)
    assert attempt_it(store, settings, seq) is AttemptOutcome.ENCRYPTED
    assert store.transitions() == ["claim", "finish"]
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["archive"], doc["failure_count"]) == ("encrypted", RECORD, 0)
    assert doc["attempts"][-1]["outcome"] == "encrypted"


def test_failed_counts_the_error(store, settings, seq, monkeypatch):
    pipeline(monkeypatch, raising(ToolError("tar exited 2")))
    assert attempt_it(store, settings, seq) is AttemptOutcome.FAILED
    assert store.transitions() == ["claim", "fail"]
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert doc["last_error"] == "ToolError: tar exited 2"
    assert "archive" not in doc


def test_released_when_cancelled_is_not_counted(store, settings, seq, monkeypatch):
    pipeline(monkeypatch, raising(Cancelled("archiving was cancelled")))
    assert attempt_it(store, settings, seq) is AttemptOutcome.RELEASED
    assert store.calls[-1] == (
        "release",
        {"reason": "cancelled: archiving was cancelled", "error": False},
    )
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert doc["attempts"][-1]["outcome"] == "released"


def test_deferred_when_the_destination_is_full_is_not_counted(store, settings, seq, monkeypatch):
    pipeline(monkeypatch, raising(OutOfSpace("/archives: 1 GiB free, 2 GiB needed")))
    assert attempt_it(store, settings, seq) is AttemptOutcome.DEFERRED
    assert store.calls[-1] == (
        "release",
        {"reason": "OutOfSpace: /archives: 1 GiB free, 2 GiB needed", "error": True},
    )
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert doc["last_error"] == "OutOfSpace: /archives: 1 GiB free, 2 GiB needed"


def test_lost_when_another_worker_took_the_run_over(store, settings, seq, monkeypatch):
    def body(before_publish):
        store.force_release(RUN_ID)
        store.claim(RUN_ID, worker_id="host-b")
        before_publish()
        return RECORD

    pipeline(monkeypatch, body)
    assert attempt_it(store, settings, seq) is AttemptOutcome.LOST
    assert store.transitions() == ["claim", "claim"]  # ours, then host-b's: nothing recorded
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["worker_id"]) == ("processing", "host-b")
    assert "archive" not in doc


def test_skipped_when_the_run_is_not_claimable(store, settings, seq, monkeypatch):
    pipeline(monkeypatch, raising(AssertionError("must not run")))
    store.claim(RUN_ID, worker_id="host-b")
    before = store.get(RUN_ID)
    assert attempt_it(store, settings, seq) is AttemptOutcome.SKIPPED
    assert store.transitions() == ["claim", "claim"]  # host-b's, then our refused one
    assert store.get(RUN_ID) == before


def test_no_recipient_releases_the_run_uncounted(store, settings, seq, monkeypatch):
    pipeline(monkeypatch, raising(AssertionError("must not run")))

    def unusable(recipient, gnupg_home):
        raise RecipientError("GPG recipient 'FFFF': no public key found")

    monkeypatch.setattr(attempt, "check_recipient", unusable)
    assert attempt_it(store, settings, seq) is AttemptOutcome.NO_RECIPIENT
    message = (
        "not archived now: the GPG recipient is unusable: GPG recipient 'FFFF': no public key found"
    )
    assert store.calls[-1] == ("release", {"reason": message, "error": True})
    doc = store.get(RUN_ID)
    assert (doc["status"], doc["failure_count"], doc["last_error"]) == ("pending", 0, message)
