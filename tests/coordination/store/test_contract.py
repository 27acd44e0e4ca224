"""One contract, two backends: every transition behaves the same on SQLite and CouchDB.

The CouchDB side runs against the real CouchDB-compatible test server (or a real
Apache CouchDB when DFARCHIVE_TEST_COUCHDB_URL is set).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from dfarchive.coordination import runstate
from dfarchive.coordination.store import NewRun, RunStore, SqliteStore
from dfarchive.errors import ClaimLost, TransitionRefused, UnknownRun
from tests.support.clock import ManualClock

ORIGINAL_FIELDS = {
    "_id",
    "path",
    "status",
    "worker_id",
    "failure_count",
    "created_at",
    "updated_at",
}


@pytest.fixture(params=["sqlite", "couchdb"])
def make_store(request, tmp_path) -> Callable[..., RunStore]:
    """Build a set-up store of the parametrized backend on fresh storage."""
    stores: list[RunStore] = []

    def make(**options) -> RunStore:
        if request.param == "sqlite":
            store: RunStore = SqliteStore(tmp_path / "runs.sqlite3", **options)
            store.setup()
        else:
            store = request.getfixturevalue("couchdb_store")(**options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def clock() -> ManualClock[datetime]:
    """Moved by hand: leases expire without waiting."""
    return ManualClock(datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
def store(make_store, clock) -> RunStore:
    return make_store(max_attempts=3, lease_seconds=60, clock=clock)


def register(store: RunStore, *run_ids: str, worker: str = "scanner:1") -> list[str]:
    runs = [NewRun(run_id=r, path=f"/data/seq/A/{r}", sequencer="A") for r in run_ids]
    return store.register_many(runs, worker_id=worker)


# -- registration ---------------------------------------------------------------------


def test_register_creates_pending_documents_with_the_original_fields(store):
    assert register(store, "run_001", "run_002") == ["run_001", "run_002"]
    doc = store.get("run_001")
    assert doc.keys() >= ORIGINAL_FIELDS
    assert doc["status"] == "pending"
    assert doc["path"] == "/data/seq/A/run_001"
    assert doc["sequencer"] == "A"
    assert doc["failure_count"] == 0
    assert doc["worker_id"] == "scanner:1"
    assert doc["created_at"] == doc["updated_at"] == "2026-11-24T12:00:00+00:00"
    assert [d["_id"] for d in store.runs("pending")] == ["run_001", "run_002"]


def test_register_is_idempotent_and_keeps_existing_state(store):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    assert register(store, "run_001", "run_002") == ["run_002"]
    doc = store.get("run_001")
    assert doc["status"] == "processing"
    assert doc["claim_token"] == claim.token
    assert register(store) == []


def test_get_unknown_run_is_none_and_transitions_on_it_raise(store):
    assert store.get("nope") is None
    with pytest.raises(UnknownRun):
        store.claim("nope", worker_id="w:1")
    with pytest.raises(UnknownRun):
        store.retry("nope")


# -- claim, heartbeat, finish -----------------------------------------------------------


def test_claim_takes_a_pending_run_once(store, clock):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="host-a:11")
    assert claim is not None and claim.worker_id == "host-a:11"
    assert store.claim("run_001", worker_id="host-b:22") is None
    doc = store.get("run_001")
    assert doc["status"] == "processing"
    assert doc["worker_id"] == "host-a:11"
    assert doc["lease_expires_at"] == "2026-11-24T12:01:00+00:00"


def test_heartbeat_extends_the_lease_and_records_progress(store, clock):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    clock.advance(30)
    assert store.heartbeat(claim, {"bytes_done": 10, "bytes_total": 100})
    doc = store.get("run_001")
    assert doc["lease_expires_at"] == "2026-11-24T12:01:30+00:00"
    assert doc["heartbeat_at"] == "2026-11-24T12:00:30+00:00"
    assert doc["progress"] == {"bytes_done": 10, "bytes_total": 100}


def test_finish_marks_encrypted_with_the_archive_record(store, clock):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    clock.advance(5)
    record = {"file": "/arch/run_001.tar.gpg", "size": 123, "sha256": "ab" * 32}
    doc = store.finish(claim, record)
    assert doc["status"] == "encrypted"
    assert doc["archive"] == record
    assert doc["lease_expires_at"] is None
    assert doc["attempts"][-1]["outcome"] == "encrypted"
    stored = store.get("run_001")
    assert stored["status"] == "encrypted" and stored["_rev"] == doc["_rev"]
    # a finished run can't be claimed or finished again
    assert store.claim("run_001", worker_id="w:2") is None
    assert store.finish(claim, record)["_rev"] == doc["_rev"]  # retried write: no-op


def test_transitions_refuse_a_claim_that_is_not_held(store):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    store.release(claim, "shutdown")
    with pytest.raises(ClaimLost):
        store.finish(claim, {"file": "x"})
    assert not store.heartbeat(claim)
    assert store.get("run_001")["status"] == "pending"
    other = store.claim("run_001", worker_id="w:2")
    with pytest.raises(ClaimLost):
        store.fail(claim, "late failure of an old claim")
    with pytest.raises(ClaimLost):
        store.release(claim, "late release of an old claim")
    assert store.get("run_001")["claim_token"] == other.token


# -- failures ---------------------------------------------------------------------------


def test_fail_counts_and_ends_failed_at_max_attempts(store):
    register(store, "run_001")
    for attempt in (1, 2):
        claim = store.claim("run_001", worker_id="w:1")
        doc = store.fail(claim, f"tar exited 2 (attempt {attempt})")
        assert doc["status"] == "pending"
        assert doc["failure_count"] == attempt
        assert doc["last_error"] == f"tar exited 2 (attempt {attempt})"
    claim = store.claim("run_001", worker_id="w:1")
    doc = store.fail(claim, "tar exited 2 (attempt 3)")
    assert doc["status"] == "failed"
    assert doc["failure_count"] == 3
    assert [a["outcome"] for a in doc["attempts"]] == ["failed"] * 3
    assert store.claim("run_001", worker_id="w:1") is None


def test_release_returns_to_pending_without_counting(store):
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    doc = store.release(claim, "worker shutting down")
    assert doc["status"] == "pending"
    assert doc["failure_count"] == 0
    assert doc["attempts"][-1]["outcome"] == "released"


def test_retry_resets_a_failed_run_and_refuses_others(store):
    register(store, "run_001", "run_002")
    for _ in range(3):
        store.fail(store.claim("run_001", worker_id="w:1"), "boom")
    doc = store.retry("run_001")
    assert doc["status"] == "pending" and doc["failure_count"] == 0
    with pytest.raises(TransitionRefused):
        store.retry("run_002")


def test_attempt_history_is_bounded(make_store, clock):
    store = make_store(max_attempts=100, clock=clock)
    register(store, "run_001")
    for n in range(runstate.ATTEMPTS_KEPT + 5):
        store.fail(store.claim("run_001", worker_id="w:1"), f"error {n}")
    attempts = store.get("run_001")["attempts"]
    assert len(attempts) == runstate.ATTEMPTS_KEPT
    assert attempts[-1]["error"] == f"error {runstate.ATTEMPTS_KEPT + 4}"


# -- leases -----------------------------------------------------------------------------


def test_reclaim_expired_puts_dead_claims_back_counted(store, clock):
    register(store, "run_001", "run_002")
    dead = store.claim("run_001", worker_id="dead-host:1")
    alive = store.claim("run_002", worker_id="live-host:2")
    clock.advance(45)
    assert store.heartbeat(alive)
    assert store.reclaim_expired() == []
    clock.advance(20)  # run_001's lease (60 s) is over; run_002 was renewed at +45
    assert store.reclaim_expired() == ["run_001"]
    doc = store.get("run_001")
    assert doc["status"] == "pending"
    assert doc["failure_count"] == 1
    assert "dead-host:1" in doc["last_error"]
    # the paused holder comes back: it can't touch the run any more
    assert not store.heartbeat(dead)
    with pytest.raises(ClaimLost):
        store.finish(dead, {"file": "x"})
    assert store.get("run_002")["status"] == "processing"


def test_force_release_frees_a_claim_whatever_its_lease_uncounted(store, clock):
    register(store, "run_001", "run_002")
    holder = store.claim("run_001", worker_id="stuck-host:1")
    doc = store.get("run_001")
    doc["lease_expires_at"] = "2999-01-01T00:00:00+00:00"  # edited by hand: never expires
    store._replace(doc)
    assert store.reclaim_expired() == []
    clock.advance(5)
    doc = store.force_release("run_001")
    assert (doc["status"], doc["failure_count"], doc["lease_expires_at"]) == ("pending", 0, None)
    attempt = doc["attempts"][-1]
    assert (attempt["outcome"], attempt["worker_id"]) == ("released", "stuck-host:1")
    assert "released by an operator from worker stuck-host:1" in attempt["error"]
    assert "2999-01-01" in attempt["error"]
    # the holder, if alive, finds out at its next heartbeat and can't finish
    assert not store.heartbeat(holder)
    with pytest.raises(ClaimLost):
        store.finish(holder, {"file": "x"})
    assert store.claim("run_001", worker_id="w:2") is not None  # claimable again
    with pytest.raises(TransitionRefused, match="'pending'; only processing runs"):
        store.force_release("run_002")
    with pytest.raises(UnknownRun):
        store.force_release("run_404")


# -- enqueue bookkeeping ---------------------------------------------------------------


def test_enqueue_window(store, clock):
    register(store, "run_001", "run_002")
    due = store.due_for_enqueue(600)
    assert [d["_id"] for d in due] == ["run_001", "run_002"]
    assert store.mark_enqueued(due[0])
    assert not store.mark_enqueued(due[0])  # stale copy: someone (we) changed it
    assert [d["_id"] for d in store.due_for_enqueue(600)] == ["run_002"]
    clock.advance(601)
    assert [d["_id"] for d in store.due_for_enqueue(600)] == ["run_001", "run_002"]


# -- hand-edited documents ---------------------------------------------------------------


def test_odd_documents_do_not_crash_transitions(store, clock):
    register(store, "run_001")
    doc = store.get("run_001")
    doc.update(failure_count="2", status="processing", lease_expires_at="garbage")
    assert store._replace(doc) is not None
    assert store.reclaim_expired() == ["run_001"]  # unreadable lease counts as expired
    assert store.get("run_001")["failure_count"] == 3
    assert store.get("run_001")["status"] == "failed"


# -- races ------------------------------------------------------------------------------


def test_claim_race_has_exactly_one_winner(make_store):
    store = make_store()
    rounds, threads = 50, 8
    register(store, *[f"race_{n:03d}" for n in range(rounds)])
    for n in range(rounds):
        run_id = f"race_{n:03d}"
        start = threading.Barrier(threads)
        winners: list[str] = []

        def contend(worker: str, run_id=run_id, start=start, winners=winners) -> None:
            start.wait()
            if store.claim(run_id, worker_id=worker) is not None:
                winners.append(worker)

        pool = [threading.Thread(target=contend, args=(f"w:{i}",)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert len(winners) == 1, f"{run_id}: winners {winners}"
        assert store.get(run_id)["worker_id"] == winners[0]


def test_concurrent_heartbeats_and_progress_lose_no_update(make_store):
    """Two writers on one document (progress heartbeats vs. an operator's retry of
    another run) never lose each other's changes: the CAS loop re-reads."""
    store = make_store()
    register(store, "run_001")
    claim = store.claim("run_001", worker_id="w:1")
    errors: list[BaseException] = []

    def beat(field: str) -> None:
        try:
            for n in range(20):
                assert store.heartbeat(claim, {field: n})
        except BaseException as error:  # surfaced below
            errors.append(error)

    pool = [threading.Thread(target=beat, args=(f"f{i}",)) for i in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors
    doc = store.get("run_001")
    assert doc["status"] == "processing"
    assert int(doc["_rev"].split("-")[0]) == 1 + 1 + 4 * 20  # register, claim, 80 heartbeats


def test_get_many_returns_the_stored_documents_that_exist(store):
    register(store, "run_001", "run_002", "run_003")
    found = store.get_many(["run_003", "run_001", "absent"])
    assert sorted(found) == ["run_001", "run_003"]
    assert found["run_001"] == store.get("run_001")
    assert store.get_many([]) == {}


def test_changed_since_reports_every_later_write_or_says_it_cannot(store, clock):
    register(store, "run_001", "run_002")
    mark = store.changed_since(None).mark
    register(store, "run_003")
    store.claim("run_001", worker_id="w")
    changes = store.changed_since(mark)
    assert changes.ids is None or {"run_001", "run_003"} <= changes.ids
    assert changes.ids is None or "run_002" not in changes.ids


# -- bulk enqueue marks (scheduling cost, issue 11) -------------------------------------


def test_mark_enqueued_many_marks_the_current_documents_and_skips_conflicts(store, clock):
    register(store, "run_001", "run_002", "run_003", "run_004")
    due = store.due_for_enqueue(600)
    store.claim("run_002", worker_id="w:1")  # claimed since it was read: stale copy
    store.mark_enqueued(due[2])  # another scheduler marked run_003 first
    marked = store.mark_enqueued_many(due)
    assert [doc["_id"] for doc in marked] == ["run_001", "run_004"]
    for doc in marked:
        assert doc == store.get(doc["_id"])  # as stored, with the new _rev
        assert doc["enqueued_at"] == runstate.timestamp(clock.now)
    assert store.get("run_002")["status"] == "processing"
    assert store.due_for_enqueue(600) == []
    assert store.mark_enqueued_many(due) == []  # every copy is stale now
    assert store.mark_enqueued_many([]) == []


def test_unmark_enqueued_many_makes_runs_due_again_unless_changed_since(store, clock):
    register(store, "run_001", "run_002")
    marked = store.mark_enqueued_many(store.due_for_enqueue(600))
    store.claim("run_002", worker_id="w:1")
    assert store.unmark_enqueued_many(marked) == ["run_001"]
    assert [doc["_id"] for doc in store.due_for_enqueue(600)] == ["run_001"]
    assert store.get("run_002")["status"] == "processing"  # the claim is left alone
    assert store.unmark_enqueued_many([]) == []


# -- the original tool's live claims (legacy_lease_seconds) -----------------------------
# (a section of its own: the enqueue tests above belong to another change)


def legacy_claim(store: RunStore, run_id: str, host: str, updated_at: datetime) -> None:
    """Make ``run_id`` processing as the original tool writes it: no claim fields."""
    doc = store.get(run_id)
    kept = {key: doc[key] for key in (*ORIGINAL_FIELDS, "_rev")}
    kept.update(status="processing", worker_id=host, updated_at=runstate.timestamp(updated_at))
    assert store._replace(kept) is not None


def test_a_legacy_claim_is_held_until_updated_at_plus_legacy_lease(make_store, clock):
    store = make_store(lease_seconds=60, legacy_lease_seconds=3600, clock=clock)
    register(store, "run_001", "run_002")
    legacy_claim(store, "run_001", "seq-host-1", clock.now - timedelta(seconds=600))
    clock.advance(2999)  # 3599 s after its updated_at
    sweep = store.sweep_leases()
    assert sweep.reclaimed == [] and [d["_id"] for d in sweep.legacy_held] == ["run_001"]
    assert store.claim("run_001", worker_id="w") is None  # never taken while held
    clock.advance(1)
    sweep = store.sweep_leases()
    assert (sweep.reclaimed, sweep.legacy_held) == (["run_001"], [])
    doc = store.get("run_001")
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert doc["last_error"] == (
        "lease expired: the original tool on seq-host-1 held it with no lease, last "
        "updated 2026-11-24T11:50:00+00:00 (legacy_lease_seconds passed)"
    )
    claim = store.claim("run_001", worker_id="w")  # now dfarchive's: an ordinary claim
    assert claim is not None and not runstate.legacy_claim(store.get("run_001"))


def test_the_legacy_lease_defaults_to_a_day(make_store, clock):
    store = make_store(clock=clock)
    register(store, "run_001")
    legacy_claim(store, "run_001", "seq-host-1", clock.now)
    clock.advance(86399)
    assert store.reclaim_expired() == []
    clock.advance(1)
    assert store.reclaim_expired() == ["run_001"]


def test_a_dfarchive_claim_with_a_broken_lease_is_not_legacy(make_store, clock):
    store = make_store(clock=clock)
    register(store, "run_001")
    store.claim("run_001", worker_id="w")
    doc = store.get("run_001")
    store._replace({**doc, "lease_expires_at": None})  # claim fields there, lease unreadable
    assert store.reclaim_expired() == ["run_001"]


def test_the_legacy_hold_message_says_who_how_long_and_how_to_take_over(clock):
    doc = {"_id": "run_9", "status": "processing", "worker_id": "seq-host-1",
           "updated_at": "2026-11-24T10:30:00+00:00"}  # fmt: skip
    assert runstate.legacy_held([doc], now=clock.now, legacy_lease_seconds=86400) == [doc]
    assert runstate.legacy_hold_message(doc, now=clock.now, legacy_lease_seconds=86400) == (
        "[run_9] processing by the original tool on host seq-host-1 (last updated 1:30:00 "
        "ago); left alone until 2026-11-25T10:30:00+00:00 (legacy_lease_seconds). To take "
        "it over now: stop the original worker on seq-host-1, then run: dfarchive release run_9"
    )


def test_claims_write_the_host_as_worker_id_and_the_process_beside_it(store, clock):
    register(store, "run_001")
    store.claim("run_001", worker_id="host-a", claimed_by="host-a:4711:4712")
    doc = store.get("run_001")
    assert (doc["worker_id"], doc["claimed_by"]) == ("host-a", "host-a:4711:4712")
    for field in ("created_at", "updated_at", "claimed_at", "heartbeat_at", "lease_expires_at"):
        assert doc[field].endswith("+00:00"), field


# -- fixity audits ----------------------------------------------------------------------


def encrypted_run(store: RunStore, run_id: str) -> dict:
    register(store, run_id)
    claim = store.claim(run_id, worker_id="host-a")
    assert claim is not None
    return store.finish(claim, {"file": f"/a/{run_id}.tar.gpg", "size": 1, "sha256": "00"})


def fixity_check(result: str = "ok", when: str = "2026-11-24T12:00:00+00:00") -> dict:
    return {
        "checked_at": when,
        "result": result,
        "reason": None,
        "host": "auditor",
        "seconds": 1.0,
        "deep": False,
    }


def test_record_fixity_survives_a_concurrent_write_and_changes_nothing_else(store, clock):
    before = encrypted_run(store, "run_f")
    original_replace = store._replace
    raced = []

    def racing_replace(doc):
        if not raced:  # another writer (e.g. an adoption or another audit) gets in first
            raced.append(original_replace({**store.get("run_f"), "note": "other writer"}))
        return original_replace(doc)

    store._replace = racing_replace  # type: ignore[method-assign]
    stored = store.record_fixity("run_f", fixity_check("failed"))
    store._replace = original_replace  # type: ignore[method-assign]
    assert raced and raced[0] is not None
    assert stored["fixity"] == fixity_check("failed") and stored["note"] == "other writer"
    kept = {k: v for k, v in stored.items() if not k.startswith(("fixity", "_rev", "note"))}
    assert kept == {k: v for k, v in before.items() if k != "_rev"}  # status, claim, times
    later = store.record_fixity("run_f", fixity_check(when="2026-11-25T12:00:00+00:00"))
    assert later["fixity_history"] == [fixity_check("failed")]


def test_record_fixity_refuses_a_run_that_is_not_encrypted(store):
    register(store, "run_p")
    claim = store.claim("run_p", worker_id="host-a")
    with pytest.raises(TransitionRefused, match="only encrypted runs are audited"):
        store.record_fixity("run_p", fixity_check())
    assert store.heartbeat(claim)  # the archiving claim is untouched
    assert "fixity" not in store.get("run_p")


def test_due_audits_are_marked_once_per_window(store, clock):
    for run_id in ("run_a", "run_b"):
        encrypted_run(store, run_id)
    register(store, "run_pending")
    clock.advance(3 * 86400)
    due = store.due_for_fixity(timedelta(days=1), window_seconds=3600)
    assert sorted(doc["_id"] for doc in due) == ["run_a", "run_b"]
    marked = store.mark_fixity_enqueued_many(due)
    assert sorted(doc["_id"] for doc in marked) == ["run_a", "run_b"]
    assert store.due_for_fixity(timedelta(days=1), window_seconds=3600) == []
    clock.advance(3600)
    assert len(store.due_for_fixity(timedelta(days=1), window_seconds=3600)) == 2
    assert store.mark_fixity_enqueued_many(due) == []  # stale documents: another won
