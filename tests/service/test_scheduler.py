"""The scheduling pass on both backends: new folders are registered once, folders the
store holds for another path or in an unknown state are logged every pass, what a pass
learnt is reused only while the store says it is unchanged; due runs are marked in one
write, each sent by one scheduler, and a run whose message was not sent is sent again by
the next pass."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dfarchive.coordination.store import RunStore, SqliteStore
from dfarchive.errors import BrokerError
from dfarchive.service.config import Config
from dfarchive.service.messaging import check_broker, enqueue_archive, make_broker
from dfarchive.service.scheduler import schedule_pass

SENTINEL = ".metadata_rsync_exitcode"


@pytest.fixture(params=["sqlite", "couchdb"])
def store(request, tmp_path: Path) -> Iterator[RunStore]:
    if request.param == "sqlite":
        made: RunStore = SqliteStore(tmp_path / "runs.sqlite3")
        made.setup()
    else:
        made = request.getfixturevalue("couchdb_store")()
    with made:
        yield made


@pytest.fixture
def twin(request, store: RunStore) -> Iterator[RunStore]:
    """A second store object on ``store``'s data, as another scheduler would have."""
    if isinstance(store, SqliteStore):
        with SqliteStore(store.path) as other:
            yield other
    else:
        yield request.getfixturevalue("couchdb_store")()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    for run in ("run_1", "run_2", "run_3"):
        folder = tmp_path / "seq" / "A" / run
        folder.mkdir(parents=True)
        (folder / SENTINEL).write_text("0")
    return Config(
        source="test",
        sequencing_path=tmp_path / "seq",
        destination_path=tmp_path,
        gpg_receiver="unused",
        keys_path=tmp_path,
    )


@pytest.fixture
def reads(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids of every ``get_many`` call, one list per call."""
    calls: list[list[str]] = []
    real = store.get_many

    def get_many(run_ids):
        calls.append(sorted(run_ids))
        return real(calls[-1])

    monkeypatch.setattr(store, "get_many", get_many)
    return calls


def delete(store: RunStore, run_id: str) -> None:
    """Delete a run document behind the store's back, as an operator would."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return
    rev = store.get(run_id)["_rev"]
    store._client.delete_document(db=store.database, doc_id=run_id, rev=rev)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    caplog.clear()
    return found


def test_runs_are_registered_once_and_known_ones_read_only_when_changed(
    store: RunStore,
    config: Config,
    reads: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def schedule() -> list[str]:
        return schedule_pass(store, config, worker_id="scheduler:1").registered

    has_log = store.changed_since(None).mark is not None  # a change log: CouchDB
    everything = ["run_1", "run_2", "run_3"]
    assert sorted(schedule()) == everything
    assert schedule() == []  # the new documents are read once, then known
    assert schedule() == []
    assert reads == [everything] * (3 if not has_log else 2)

    reads.clear()
    doc = store.get("run_1")
    store._replace({**doc, "path": "/elsewhere/run_1"})  # another folder took the id
    delete(store, "run_2")
    with caplog.at_level(logging.ERROR):
        assert schedule() == ["run_2"]
        assert any("'/elsewhere/run_1'" in e for e in errors(caplog))
        assert schedule() == []
        assert any("'/elsewhere/run_1'" in e for e in errors(caplog))  # every pass
    assert store.get("run_2")["status"] == "pending"
    if has_log:  # only what changed is read again; the foreign document every pass
        assert reads == [["run_1", "run_2"], ["run_1", "run_2"]]


def test_a_pass_on_a_fresh_store_costs_a_few_requests_whatever_the_runs(
    couchdb_store: Callable[..., RunStore], config: Config
) -> None:
    for n in range(4, 200):
        folder = config.sequencing_path / "B" / f"run_{n:03d}"
        folder.mkdir(parents=True)
        (folder / SENTINEL).write_text("0")
    writer = couchdb_store()
    assert len(schedule_pass(writer, config, worker_id="s:1").registered) == 199
    for n in range(200, 300):
        folder = config.sequencing_path / "B" / f"run_{n:03d}"
        folder.mkdir(parents=True)
        (folder / SENTINEL).write_text("0")

    fresh = couchdb_store()  # a new process: knows nothing yet
    before = fresh.request_count
    assert len(schedule_pass(fresh, config, worker_id="s:2").registered) == 100
    # changes feed, one read of all 299, one bulk insert, the processing view
    assert fresh.request_count - before == 4
    before = fresh.request_count
    assert schedule_pass(fresh, config, worker_id="s:2").registered == []
    assert fresh.request_count - before == 3  # changes, read of the 100 new, view
    before = fresh.request_count
    assert schedule_pass(fresh, config, worker_id="s:2").registered == []
    assert fresh.request_count - before == 2  # changes, view


# -- enqueuing: one bulk mark, then the messages ----------------------------------------


class BrokerDown(Exception):
    pass


def test_a_failed_send_leaves_the_runs_not_sent_due_for_the_next_pass(
    store: RunStore, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[str] = []

    def send_one_then_fail(run_id: str) -> None:
        if sent:
            raise BrokerDown("connection refused")
        sent.append(run_id)

    with pytest.raises(BrokerDown), caplog.at_level(logging.WARNING):
        schedule_pass(store, config, worker_id="s:1", enqueue=send_one_then_fail)
    assert sent == ["run_1"]
    assert store.get("run_1")["enqueued_at"] is not None
    assert [store.get(run).get("enqueued_at") for run in ("run_2", "run_3")] == [None, None]
    assert "2 runs not sent; the next pass sends them" in caplog.messages

    # the next pass, well within the re-enqueue window, sends what was not sent
    again: list[str] = []
    report = schedule_pass(store, config, worker_id="s:1", enqueue=again.append)
    assert again == report.enqueued == ["run_2", "run_3"]
    assert schedule_pass(store, config, worker_id="s:1", enqueue=again.append).enqueued == []


def test_a_run_claimed_before_its_mark_is_removed_keeps_its_claim(
    store: RunStore, config: Config
) -> None:
    claims = []

    def claim_then_fail(run_id: str) -> None:
        claims.append(store.claim("run_1", worker_id="w:1"))  # a worker, meanwhile
        raise BrokerDown("connection refused")

    with pytest.raises(BrokerDown):
        schedule_pass(store, config, worker_id="s:1", enqueue=claim_then_fail)
    claimed = store.get("run_1")
    assert claimed["status"] == "processing" and claimed["enqueued_at"] is not None
    assert store.heartbeat(claims[0])  # the claim is intact
    assert [store.get(run)["enqueued_at"] for run in ("run_2", "run_3")] == [None, None]


def test_two_schedulers_send_each_due_run_once(
    store: RunStore, twin: RunStore, config: Config
) -> None:
    schedule_pass(store, config, worker_id="s:1")  # register only
    first, second = store.due_for_enqueue(3600), twin.due_for_enqueue(3600)
    assert [doc["_id"] for doc in store.mark_enqueued_many(first[:2])] == ["run_1", "run_2"]
    # the other scheduler read the same documents before: its marks lose, but run_3's
    assert [doc["_id"] for doc in twin.mark_enqueued_many(second)] == ["run_3"]
    assert twin.due_for_enqueue(3600) == []


def test_a_pass_enqueuing_hundreds_of_runs_costs_a_few_requests(
    couchdb_store: Callable[..., RunStore], config: Config
) -> None:
    for n in range(4, 300):
        folder = config.sequencing_path / "B" / f"run_{n:03d}"
        folder.mkdir(parents=True)
        (folder / SENTINEL).write_text("0")
    store = couchdb_store()
    sent: list[str] = []
    before = store.request_count
    report = schedule_pass(store, config, worker_id="s:1", enqueue=sent.append)
    assert len(report.registered) == len(sent) == len(set(sent)) == 299
    # changes feed, read of the 299, bulk insert, processing view, pending view, bulk mark
    assert store.request_count - before == 6
    assert all(doc.get("enqueued_at") for doc in store.runs("pending"))


# -- an unreachable broker ----------------------------------------------------------------


@pytest.fixture
def unreachable_broker_url() -> str:
    """An AMQP URL to a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"amqp://archiver:secret@127.0.0.1:{port}/%2F"


def test_an_unreachable_broker_is_a_broker_error_naming_where(
    unreachable_broker_url: str,
) -> None:
    """Through the connection errors Dramatiq 2 and 3 raise (the deprecated
    ``dramatiq.errors.ConnectionError`` would fail here: pytest errors on deprecations)."""
    broker = make_broker(unreachable_broker_url)
    port = unreachable_broker_url.rsplit(":", 1)[1].split("/")[0]
    try:
        with pytest.raises(BrokerError, match=f"cannot connect to RabbitMQ at 127.0.0.1:{port}"):
            check_broker(broker, unreachable_broker_url)
        with pytest.raises(BrokerError, match=r"cannot publish archive_run\('run_1'\)"):
            enqueue_archive(broker, "run_1")
    finally:
        broker.close()


def test_runs_not_sent_to_an_unreachable_broker_are_due_at_the_next_pass(
    store: RunStore, config: Config, unreachable_broker_url: str
) -> None:
    broker = make_broker(unreachable_broker_url)
    try:
        with pytest.raises(BrokerError, match=r"cannot publish archive_run\('run_1'\)"):
            schedule_pass(
                store, config, worker_id="s:1", enqueue=lambda run: enqueue_archive(broker, run)
            )
    finally:
        broker.close()
    sent: list[str] = []
    assert schedule_pass(store, config, worker_id="s:1", enqueue=sent.append).enqueued == sent
    assert sent == ["run_1", "run_2", "run_3"]  # not an hour later: now
