"""One attempt at one run (``attempt_run``): every outcome, and the checks before the work.

The unit tests put a stand-in for the pipeline (``attempt.archive_run``) on a real SQLite
store: the outcome logic is what they test. The last test runs the real pipeline
(tar, OpenPGP, gpg key wrap) with a real keyring.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dfarchive.archiving.keys import Recipient, resolve_recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination import attempt
from dfarchive.coordination.attempt import AttemptOutcome, RecipientGate, attempt_run
from dfarchive.coordination.store import NewRun, SqliteStore
from dfarchive.errors import Cancelled, RecipientError, StoreUnavailable, ToolError

RECIPIENT = Recipient(fingerprint="F" * 40, uid="test", expires=None)
RECORD = {"file": "/archives/run_1.tar.gpg", "size": 1}


class FlakyHeartbeats(SqliteStore):
    """A real SQLite store whose heartbeats fail with StoreUnavailable the first
    ``failures`` times (None: always); every other call works."""

    def __init__(self, path: Path, *, failures: int | None, **options: Any) -> None:
        super().__init__(path, **options)
        self.failures = failures
        self.failed = 0

    def heartbeat(self, claim, progress=None):  # type: ignore[no-untyped-def]
        if self.failures is None or self.failed < self.failures:
            self.failed += 1
            raise StoreUnavailable("connection refused (test)")
        return super().heartbeat(claim, progress)


@pytest.fixture
def seq(tmp_path: Path) -> Path:
    run = tmp_path / "seq" / "seqA" / "run_1"
    run.mkdir(parents=True)
    return tmp_path / "seq"


@pytest.fixture
def settings(tmp_path: Path) -> ArchiveSettings:
    return ArchiveSettings(destination_path=tmp_path / "archives", keys_path=tmp_path / "keys")


def make_store(tmp_path: Path, seq: Path, cls: type = SqliteStore, **options: Any) -> SqliteStore:
    store = cls(tmp_path / "runs.sqlite3", **options)
    store.setup()
    store.register_many([NewRun("run_1", str(seq / "seqA" / "run_1"), "seqA")], worker_id="h")
    return store


@pytest.fixture
def store(tmp_path: Path, seq: Path) -> SqliteStore:
    with make_store(tmp_path, seq, lease_seconds=60) as store:
        yield store


@pytest.fixture
def recipient_ok(monkeypatch: pytest.MonkeyPatch) -> list[Recipient]:
    """The recipient check passes; returns the recipients it was asked about."""
    asked: list[Recipient] = []
    monkeypatch.setattr(attempt, "check_recipient", lambda r, gnupg_home: asked.append(r))
    return asked


def pipeline(monkeypatch: pytest.MonkeyPatch, body: Callable[..., dict]) -> list[Path]:
    """Replace the pipeline by ``body(before_publish)``; returns the run paths it got."""
    paths: list[Path] = []

    def fake(run_id, run_path, settings, recipient, *, progress, cancel, before_publish):
        paths.append(run_path)
        return body(before_publish)

    monkeypatch.setattr(attempt, "archive_run", fake)
    return paths


def run(store: SqliteStore, settings: ArchiveSettings, seq: Path, **kwargs: Any) -> AttemptOutcome:
    return attempt_run(
        store,
        "run_1",
        worker_id="host-a",
        settings=settings,
        recipient=RECIPIENT,
        sequencing_path=seq,
        **kwargs,
    )


def raising(error: BaseException) -> Callable[..., dict]:
    def body(before_publish: Callable[[], None]) -> dict:
        raise error

    return body


# -- one test per outcome ---------------------------------------------------------------


def test_encrypted(store, settings, seq, monkeypatch, recipient_ok):
    def body(before_publish):
        before_publish()
        return RECORD

    paths = pipeline(monkeypatch, body)
    assert run(store, settings, seq) is AttemptOutcome.ENCRYPTED
    doc = store.get("run_1")
    assert (doc["status"], doc["archive"], doc["failure_count"]) == ("encrypted", RECORD, 0)
    assert paths == [seq / "seqA" / "run_1"] and recipient_ok == [RECIPIENT]


def test_failed_is_counted(store, settings, seq, monkeypatch, recipient_ok):
    pipeline(monkeypatch, raising(ToolError("tar exited 2")))
    assert run(store, settings, seq) is AttemptOutcome.FAILED
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert doc["last_error"] == "ToolError: tar exited 2"


def test_released_when_cancelled_uncounted(store, settings, seq, monkeypatch, recipient_ok):
    pipeline(monkeypatch, raising(Cancelled("archiving was cancelled")))
    assert run(store, settings, seq) is AttemptOutcome.RELEASED
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert doc["attempts"][-1]["outcome"] == "released"


def test_deferred_when_the_disk_is_full(store, settings, seq, monkeypatch, recipient_ok):
    pipeline(monkeypatch, raising(OSError(errno.ENOSPC, "No space left on device")))
    assert run(store, settings, seq) is AttemptOutcome.DEFERRED
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert "No space left on device" in doc["last_error"]


def test_lost_when_an_operator_released_the_run(store, settings, seq, monkeypatch, recipient_ok):
    def body(before_publish):
        store.force_release("run_1")
        store.claim("run_1", worker_id="host-b")  # and another worker took it
        before_publish()
        return RECORD

    pipeline(monkeypatch, body)
    assert run(store, settings, seq) is AttemptOutcome.LOST
    doc = store.get("run_1")
    assert (doc["status"], doc["worker_id"]) == ("processing", "host-b")  # left alone


def test_skipped_when_not_claimable_or_unknown(store, settings, seq, monkeypatch, recipient_ok):
    paths = pipeline(monkeypatch, raising(AssertionError("must not run")))
    store.claim("run_1", worker_id="host-b")
    assert run(store, settings, seq) is AttemptOutcome.SKIPPED
    assert (
        attempt_run(
            store,
            "run_404",
            worker_id="host-a",
            settings=settings,
            recipient=RECIPIENT,
            sequencing_path=seq,
        )
        is AttemptOutcome.SKIPPED
    )
    assert paths == [] and recipient_ok == []


# -- the checks before the heavy work ------------------------------------------------


def test_a_path_outside_sequencing_path_fails_at_once(
    store, settings, seq, tmp_path, monkeypatch, recipient_ok
):
    paths = pipeline(monkeypatch, raising(AssertionError("must not run")))
    doc = store.get("run_1")
    store._replace({**doc, "path": str(tmp_path / "elsewhere" / "run_1")})
    assert run(store, settings, seq) is AttemptOutcome.FAILED
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("failed", 1)  # max_attempts is 3
    assert doc["last_error"] == (
        f"refused: the run document's path {str(tmp_path / 'elsewhere' / 'run_1')!r} is not "
        f"this run's folder {str(seq / '<sequencer>' / 'run_1')!r}; nothing was read or written"
    )
    assert paths == [] and recipient_ok == []


def test_an_unsafe_run_id_fails_at_once(store, settings, seq, monkeypatch, recipient_ok):
    paths = pipeline(monkeypatch, raising(AssertionError("must not run")))
    store.register_many([NewRun("..", str(seq / "seqA" / ".."), "seqA")], worker_id="h")
    outcome = attempt_run(
        store, "..", worker_id="host-a", settings=settings, recipient=RECIPIENT, sequencing_path=seq
    )
    assert outcome is AttemptOutcome.FAILED
    doc = store.get("..")
    assert (doc["status"], doc["last_error"]) == (
        "failed",
        "refused: '..' is not a folder name; nothing was read or written",
    )
    assert paths == []


def test_the_pipeline_gets_the_normalised_path(store, settings, seq, monkeypatch, recipient_ok):
    paths = pipeline(monkeypatch, lambda before_publish: RECORD)
    doc = store.get("run_1")
    store._replace({**doc, "path": f"{seq}/seqB/../seqA/run_1"})
    assert run(store, settings, seq) is AttemptOutcome.ENCRYPTED
    assert paths == [seq / "seqA" / "run_1"]  # never ".." for tar to resolve through a link


def test_claims_record_the_host_and_the_process(store, settings, seq, monkeypatch, recipient_ok):
    pipeline(monkeypatch, lambda before_publish: RECORD)
    host = socket.gethostname()
    attempt_run(
        store, "run_1", worker_id=host, settings=settings, recipient=RECIPIENT, sequencing_path=seq
    )
    doc = store.get("run_1")
    assert doc["worker_id"] == host  # as the original tool: its start-up reset compares it
    assert doc["claimed_by"] == f"{host}:{os.getpid()}:{threading.get_native_id()}"
    assert doc["attempts"][-1]["claimed_by"] == doc["claimed_by"]
    for field in ("created_at", "updated_at", "claimed_at", "heartbeat_at"):
        assert doc[field].endswith("+00:00"), (field, doc[field])


# -- the recipient lost mid-flight -------------------------------------------------------


def test_an_unusable_recipient_releases_uncounted_and_closes_the_gate(
    store, settings, seq, monkeypatch, caplog
):
    paths = pipeline(monkeypatch, raising(AssertionError("must not run")))
    state = {"error": RecipientError("GPG recipient 'FFFF': no public key found")}

    def check(recipient, gnupg_home):
        if state["error"]:
            raise state["error"]

    monkeypatch.setattr(attempt, "check_recipient", check)
    gate = RecipientGate(RECIPIENT, gnupg_home=None, recheck_seconds=0)
    with caplog.at_level(logging.INFO, logger="dfarchive"):
        assert run(store, settings, seq, gate=gate) is AttemptOutcome.NO_RECIPIENT
        assert run(store, settings, seq, gate=gate) is AttemptOutcome.NO_RECIPIENT
        assert not gate.is_open()
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert doc["last_error"] == (
        "not archived now: the GPG recipient is unusable: GPG recipient 'FFFF': no public key found"
    )
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1 and loud[0].levelno == logging.CRITICAL  # once, however many runs
    assert "no new run is taken until the key is usable again" in loud[0].getMessage()
    assert paths == []
    state["error"] = None
    assert gate.is_open()
    assert "usable again" in caplog.records[-1].getMessage()


def test_a_recipient_refused_at_key_wrap_is_not_counted(
    store, settings, seq, monkeypatch, recipient_ok
):
    pipeline(monkeypatch, raising(RecipientError("GPG recipient FFFF is not usable: expired")))
    gate = RecipientGate(RECIPIENT, gnupg_home=None, recheck_seconds=3600)
    assert run(store, settings, seq, gate=gate) is AttemptOutcome.NO_RECIPIENT
    doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    assert "expired" in doc["last_error"]
    assert not gate.is_open()  # not re-checked before recheck_seconds


# -- the store unreachable just before publishing (lease.confirm) -----------------------


def confirming(monkeypatch: pytest.MonkeyPatch) -> None:
    def body(before_publish):
        before_publish()
        return RECORD

    pipeline(monkeypatch, body)


def test_confirm_waits_for_a_store_that_comes_back(tmp_path, seq, settings, monkeypatch,
                                                  recipient_ok):  # fmt: skip
    confirming(monkeypatch)
    with make_store(tmp_path, seq, FlakyHeartbeats, failures=2, lease_seconds=30) as store:
        assert run(store, settings, seq) is AttemptOutcome.ENCRYPTED
        assert store.failed == 2
        doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("encrypted", 0)


def test_confirm_releases_uncounted_when_the_lease_runs_out(tmp_path, seq, settings,
                                                            monkeypatch, recipient_ok):  # fmt: skip
    confirming(monkeypatch)
    with make_store(tmp_path, seq, FlakyHeartbeats, failures=None, lease_seconds=2) as store:
        assert run(store, settings, seq) is AttemptOutcome.RELEASED
        doc = store.get("run_1")
    assert (doc["status"], doc["failure_count"]) == ("pending", 0)
    error = doc["attempts"][-1]["error"]
    assert error.startswith("fenced: the lease (2 s) was not renewed for ")
    assert error.endswith(" s (store unreachable) and may run out")


# -- the same with the real pipeline -------------------------------------------------


def real_setup(tmp_path: Path, run_folder, gnupg_home) -> tuple[ArchiveSettings, Recipient, Path]:
    spec = run_folder(name="run_1", small_files=5, big_files=1)
    settings = ArchiveSettings(
        destination_path=tmp_path / "archives",
        keys_path=tmp_path / "keys",
        gnupg_home=Path(gnupg_home.home),
    )
    settings.destination_path.mkdir()
    settings.keys_path.mkdir(mode=0o700)
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    return settings, recipient, spec.path


@pytest.mark.parametrize("failures", [3, None])
def test_real_pipeline_with_a_store_unreachable_before_publishing(
    tmp_path, run_folder, gnupg_home, failures
):
    settings, recipient, run_path = real_setup(tmp_path, run_folder, gnupg_home)
    lease = 30 if failures else 2
    store = FlakyHeartbeats(tmp_path / "runs.sqlite3", failures=failures, lease_seconds=lease)
    with store:
        store.setup()
        store.register_many([NewRun("run_1", str(run_path), "runs")], worker_id="h")
        outcome = attempt_run(
            store,
            "run_1",
            worker_id="host-a",
            settings=settings,
            recipient=recipient,
            sequencing_path=run_path.parent.parent,
        )
        doc = store.get("run_1")
    archives = sorted(p.name for p in settings.destination_path.iterdir())
    keys = sorted(p.name for p in settings.keys_path.iterdir())
    if failures:
        assert outcome is AttemptOutcome.ENCRYPTED, doc.get("last_error")
        assert (doc["status"], doc["failure_count"]) == ("encrypted", 0)
        assert (archives, keys) == (["run_1.tar.gpg"], ["run_1.key.gpg"])
    else:  # hours of work not counted against the run; nothing half-published
        assert outcome in (AttemptOutcome.RELEASED, AttemptOutcome.LOST)
        assert (doc["failure_count"], archives, keys) == (0, [], [])
        assert doc["status"] == "pending" if outcome is AttemptOutcome.RELEASED else "processing"
