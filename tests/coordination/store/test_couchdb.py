"""CouchDB-specific behaviour of CouchStore, against a real (CouchDB-compatible) server.

The backend-agnostic behaviour is in test_contract.py; here: the design document,
the original tool's schema and view, request counts, error mapping, cross-process
claim races and restarts of an on-disk server.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfarchive.coordination.store.base import NewRun
from dfarchive.coordination.store.couchdb import LOOKUP_VIEWS, VIEWS, CouchStore
from dfarchive.errors import StoreAuthError, StoreError, StoreUnavailable
from tests.support.clock import ManualClock

BIN = Path(sys.executable).parent

StoreFactory = Callable[..., CouchStore]

#: The original dataflow_archive document: its keys and their types.
ORIGINAL_SCHEMA: dict[str, type] = {
    "_id": str,
    "path": str,
    "status": str,
    "worker_id": str,
    "failure_count": int,
    "created_at": str,
    "updated_at": str,
}
UTC_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")


def new_runs(*ids: str) -> list[NewRun]:
    return [NewRun(run_id, f"/data/sequencing/seqA/{run_id}", "seqA") for run_id in ids]


def raw_doc(server: Any, database: str, run_id: str) -> dict[str, Any]:
    """The document as another tool would read it, bypassing the store."""
    response = server.request("GET", f"/{database}/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


def assert_original_schema(doc: dict[str, Any]) -> None:
    for key, kind in ORIGINAL_SCHEMA.items():
        assert key in doc, f"{key} missing from {doc}"
        assert isinstance(doc[key], kind) and not isinstance(doc[key], bool), (key, doc[key])
    assert doc["status"] in {"pending", "processing", "encrypted", "failed"}
    for key in ("created_at", "updated_at"):
        assert UTC_TIMESTAMP.fullmatch(doc[key]), (key, doc[key])
        assert datetime.fromisoformat(doc[key]).utcoffset() == timedelta(0)
    assert doc["updated_at"] >= doc["created_at"]
    assert doc["failure_count"] >= 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- design document and views ---------------------------------------------------------


def design_docs(server: Any, database: str) -> list[dict[str, Any]]:
    response = server.request(
        "GET",
        f"/{database}/_all_docs",
        params={"startkey": '"_design/"', "endkey": '"_design0"', "include_docs": "true"},
    )
    assert response.status_code == 200, response.text
    return [row["doc"] for row in response.json()["rows"]]


def test_setup_creates_the_design_docs_once(couchdb_server, couchdb_database, couchdb_store):
    store = couchdb_store()
    ours, lookup = design_docs(couchdb_server, couchdb_database)
    assert (ours["_id"], ours["views"]) == ("_design/dfarchive", VIEWS)
    assert (lookup["_id"], lookup["views"]) == ("_design/lookup", LOOKUP_VIEWS)

    store.setup()
    couchdb_store().setup()
    assert design_docs(couchdb_server, couchdb_database) == [ours, lookup]  # not rewritten


def test_setup_updates_its_own_design_doc_keeping_other_views(
    couchdb_server, couchdb_database, couchdb_store
):
    couchdb_store()
    [ddoc, _] = design_docs(couchdb_server, couchdb_database)
    changed = {
        **ddoc,
        "views": {
            "by_status": {"map": "function (doc) { emit(doc._id, 1); }"},
            "theirs": {"map": "function (doc) { emit(doc.worker_id, null); }"},
        },
    }
    response = couchdb_server.request("PUT", f"/{couchdb_database}/_design/dfarchive", json=changed)
    assert response.status_code == 201, response.text

    couchdb_store()
    [updated, _] = design_docs(couchdb_server, couchdb_database)
    assert updated["views"] == {**VIEWS, "theirs": changed["views"]["theirs"]}
    assert int(updated["_rev"].split("-")[0]) == 3


def test_setup_never_changes_an_existing_lookup_design_doc(
    couchdb_server, couchdb_database, couchdb_store, caplog
):
    assert couchdb_server.request("PUT", f"/{couchdb_database}").status_code == 201
    theirs = {"views": {"by_path": {"map": "function (doc) { emit(doc.path, null); }"}}}
    url = f"/{couchdb_database}/_design/lookup"
    assert couchdb_server.request("PUT", url, json=theirs).status_code == 201
    before = couchdb_server.request("GET", url).text

    with caplog.at_level(logging.WARNING):
        store = couchdb_store()
    assert couchdb_server.request("GET", url).text == before  # no runfolder_id added
    assert any("has no runfolder_id view" in m for m in caplog.messages)
    store.register_many(new_runs("run_1"), worker_id="host1")
    assert [doc["_id"] for doc in store.runs("pending")] == ["run_1"]  # our own view


def test_setup_accepts_an_existing_database(couchdb_server, couchdb_database):
    assert couchdb_server.request("PUT", f"/{couchdb_database}").status_code == 201
    with couchdb_server.store(couchdb_database) as store:
        store.setup()
        store.setup()
    assert len(design_docs(couchdb_server, couchdb_database)) == 2


def test_runfolder_id_view_answers_like_the_original_tool(
    couchdb_server, couchdb_database, couchdb_store
):
    store = couchdb_store()
    store.register_many(new_runs("run_b", "run_a", "run_c"), worker_id="host1")
    assert store.claim("run_b", worker_id="host2") is not None
    couchdb_server.request("PUT", f"/{couchdb_database}/not_a_run", json={"note": "x"})

    view = f"/{couchdb_database}/_design/lookup/_view/runfolder_id"
    rows = couchdb_server.request("GET", view).json()["rows"]
    assert [(row["id"], row["key"], row["value"]) for row in rows] == [
        ("run_a", "run_a", "pending"),
        ("run_b", "run_b", "processing"),
        ("run_c", "run_c", "pending"),
    ]
    one = couchdb_server.request("GET", view, params={"key": '"run_b"'}).json()["rows"]
    assert [row["value"] for row in one] == ["processing"]


def test_runs_lists_run_documents_only(couchdb_server, couchdb_database, couchdb_store):
    store = couchdb_store()
    store.register_many(new_runs("run_2", "run_1"), worker_id="host1")
    couchdb_server.request("PUT", f"/{couchdb_database}/not_a_run", json={"note": "x"})
    store.claim("run_2", worker_id="w")

    assert [doc["_id"] for doc in store.runs()] == ["run_1", "run_2"]
    assert [doc["_id"] for doc in store.runs("processing")] == ["run_2"]
    assert [doc["_id"] for doc in store.runs("pending")] == ["run_1"]
    assert store.runs("failed") == []
    assert all("_rev" in doc for doc in store.runs())


# -- the original tool's document schema -------------------------------------------------


def test_documents_keep_the_original_schema_through_every_transition(
    couchdb_server, couchdb_database, couchdb_store
):
    clock = ManualClock(datetime(2026, 4, 28, 10, 0, 0, tzinfo=UTC))
    store = couchdb_store(clock=clock, max_attempts=2, lease_seconds=60)

    def check(run_id: str, status: str) -> None:
        doc = raw_doc(couchdb_server, couchdb_database, run_id)
        assert_original_schema(doc)
        assert doc["status"] == status

    store.register_many(new_runs("run_1", "run_2"), worker_id="scanner")
    check("run_1", "pending")
    claim = store.claim("run_1", worker_id="worker-a")
    check("run_1", "processing")
    clock.advance(10)
    assert store.heartbeat(claim, {"bytes_done": 5, "bytes_total": 10})
    check("run_1", "processing")
    store.release(claim, "shutdown")
    check("run_1", "pending")
    claim = store.claim("run_1", worker_id="worker-a")
    store.fail(claim, "tar exited 2")
    check("run_1", "pending")
    assert raw_doc(couchdb_server, couchdb_database, "run_1")["failure_count"] == 1
    claim = store.claim("run_1", worker_id="worker-b")
    store.finish(claim, {"file": "/archives/run_1.tar.gpg", "size": 1})
    check("run_1", "encrypted")

    store.claim("run_2", worker_id="worker-c")
    clock.advance(61)
    assert store.reclaim_expired() == ["run_2"]
    check("run_2", "pending")
    claim = store.claim("run_2", worker_id="worker-c")
    store.fail(claim, "gpg died")
    check("run_2", "failed")
    store.retry("run_2")
    check("run_2", "pending")
    assert store.mark_enqueued(store.get("run_2"))
    check("run_2", "pending")


# -- requests and conflicts ----------------------------------------------------------------


def test_register_many_costs_a_constant_number_of_requests(couchdb_store):
    store = couchdb_store()
    present = [f"run_{i:05d}" for i in range(10_000)]
    assert len(store.register_many(new_runs(*present), worker_id="h")) == 10_000

    fresh = [f"new_{i:04d}" for i in range(1_000)]
    before = store.request_count
    inserted = store.register_many(new_runs(*present[:500], *fresh), worker_id="h")
    assert sorted(inserted) == fresh
    assert store.request_count - before <= 3

    before = store.request_count
    assert store.register_many(new_runs(*fresh), worker_id="h") == []
    assert store.request_count - before <= 3


def test_ids_registered_concurrently_are_not_reported_as_ours(couchdb_store):
    ours, theirs = couchdb_store(), couchdb_store()
    # As if our caller's look-up ran before the other writer's insert: both looked new.
    theirs.register_many(new_runs("run_2"), worker_id="other")
    before = ours.request_count
    assert ours.register_many(new_runs("run_1", "run_2"), worker_id="us") == ["run_1"]
    assert ours.request_count - before == 1
    assert ours.get("run_2")["worker_id"] == "other"


def test_a_deleted_run_document_can_be_registered_again(couchdb_server, couchdb_store):
    store = couchdb_store()
    store.register_many(new_runs("run_1"), worker_id="h")
    rev = store.get("run_1")["_rev"]
    deleted = couchdb_server.request("DELETE", f"/{store.database}/run_1?rev={rev}")
    assert deleted.status_code == 200, deleted.text
    assert store.get_many(["run_1"]) == {}
    assert store.register_many(new_runs("run_1"), worker_id="again") == ["run_1"]
    assert store.get("run_1")["worker_id"] == "again"


def test_changed_since_reports_written_and_deleted_documents(couchdb_server, couchdb_store):
    store, other = couchdb_store(), couchdb_store()
    other.register_many(new_runs("run_1", "run_2", "run_3"), worker_id="h")
    first = store.changed_since(None)
    assert first.ids is None and first.mark is not None
    assert store.changed_since(first.mark).ids == frozenset()

    other.register_many(new_runs("run_4"), worker_id="h")
    other.claim("run_1", worker_id="w")
    rev = other.get("run_2")["_rev"]
    couchdb_server.request("DELETE", f"/{store.database}/run_2?rev={rev}")
    before = store.request_count
    later = store.changed_since(first.mark)
    assert store.request_count - before == 1
    assert later.ids == {"run_1", "run_2", "run_4"}
    assert store.changed_since(later.mark).ids == frozenset()


def test_replace_with_a_stale_rev_is_a_conflict(couchdb_store):
    store = couchdb_store()
    store.register_many(new_runs("run_1"), worker_id="h")
    read = store.get("run_1")
    written = store._replace({**read, "note": "first"})
    assert written is not None and written["_rev"] != read["_rev"]
    assert store._replace({**read, "note": "second"}) is None
    assert store.get("run_1")["note"] == "first"


def test_get_of_an_unknown_or_reserved_id_is_none(couchdb_store):
    store = couchdb_store()
    assert store.get("no_such_run") is None
    assert store.get("_design/lookup") is None
    assert store.register_many(new_runs("_reserved", "run_ok"), worker_id="h") == ["run_ok"]


def test_claim_race_across_processes_has_one_winner_per_round(couchdb_server, couchdb_store):
    rounds, workers = 50, 4
    store = couchdb_store()
    run_ids = [f"race_{i:03d}" for i in range(rounds)]
    store.register_many(new_runs(*run_ids), worker_id="h")

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    server = (couchdb_server.url, couchdb_server.username, couchdb_server.password)
    processes = [
        context.Process(
            target=claim_rounds,
            args=(server, store.database, run_ids, barrier, results, f"w{n}"),
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = dict(results.get(timeout=60) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)

    for run_id in run_ids:
        winners = [(w, tokens[run_id]) for w, tokens in outcomes.items() if tokens[run_id]]
        assert len(winners) == 1, (run_id, winners)
        doc = store.get(run_id)
        assert (doc["worker_id"], doc["claim_token"]) == winners[0]


def claim_rounds(
    server: tuple[str, str | None, str | None],
    database: str,
    run_ids: list[str],
    barrier: Any,
    results: Any,
    worker: str,
) -> None:
    """One racing process: claim every run at the same moment as the others."""
    url, username, password = server
    tokens: dict[str, str | None] = {}
    with CouchStore(url, database=database, username=username, password=password) as store:
        for run_id in run_ids:
            barrier.wait(timeout=30)
            claim = store.claim(run_id, worker_id=worker)
            tokens[run_id] = claim.token if claim else None
    results.put((worker, tokens))


# -- authentication and errors -------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_right_credentials_work_with_either_auth(couchdb_server, couchdb_database, auth):
    with couchdb_server.store(couchdb_database, auth=auth) as store:
        store.setup()
        store.register_many(new_runs("run_1"), worker_id="h")
        claim = store.claim("run_1", worker_id="w")
        assert store.finish(claim, {"file": "x"})["status"] == "encrypted"


@pytest.mark.parametrize("auth", ["basic", "session"])
def test_wrong_password_is_an_auth_error_without_the_password(
    couchdb_server, couchdb_database, couchdb_store, auth
):
    couchdb_store()
    password = "Wr0ng-Passw0rd-xyzzy"
    store = CouchStore(
        couchdb_server.url,
        database=couchdb_database,
        username=couchdb_server.username,
        password=password,
        auth=auth,
    )
    for action in (store.setup, lambda: store.get("run_1"), store.runs):
        with pytest.raises(StoreAuthError) as caught:
            action()
        message = str(caught.value)
        assert password not in message and password not in repr(caught.value)
        assert couchdb_server.url in message and couchdb_database in message
    assert password not in repr(store)


def test_credentials_in_the_url_are_used_and_never_shown(couchdb_server, couchdb_database):
    host = couchdb_server.url.split("://", 1)[1]
    url = f"http://{couchdb_server.username}:{couchdb_server.password}@{host}"
    with CouchStore(url, database=couchdb_database) as store:
        store.setup()
        assert store.url == couchdb_server.url
        assert couchdb_server.password not in repr(store)


def test_no_credentials_is_an_auth_error(couchdb_server, couchdb_database, couchdb_store):
    couchdb_store()
    with (
        CouchStore(couchdb_server.url, database=couchdb_database) as store,
        pytest.raises(StoreAuthError),
    ):
        store.get("run_1")


def test_dead_server_is_unavailable_naming_the_url_without_credentials():
    port = free_port()
    url = f"http://admin:S3cret-pw@127.0.0.1:{port}"
    store = CouchStore(url, database="runs", timeout=2)  # the SDK's retries on
    quick = CouchStore(url, database="runs", timeout=2, retries=0, auth="session")
    for action in (store.setup, lambda: quick.get("run_1"), quick.runs, quick.runs):
        with pytest.raises(StoreUnavailable) as caught:
            action()
        assert f"http://127.0.0.1:{port}" in str(caught.value)
        assert "S3cret-pw" not in str(caught.value)


def test_a_server_that_never_answers_is_unavailable_after_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (backlog), never answers
        port = silent.getsockname()[1]
        store = CouchStore(f"http://127.0.0.1:{port}", database="runs", timeout=0.5, retries=0)
        with pytest.raises(StoreUnavailable, match="timed out"):
            store.get("run_1")


def test_bad_url_or_auth_mode_is_refused():
    with pytest.raises(StoreError):
        CouchStore("ftp://host/", database="runs")
    with pytest.raises(StoreError) as caught:
        CouchStore("http://u:Pw-xyzzy@host:port/", database="runs")
    assert "Pw-xyzzy" not in str(caught.value)
    with pytest.raises(StoreError):
        CouchStore("http://127.0.0.1:5984", database="runs", username="u", password="p", auth="x")
    with pytest.raises(StoreAuthError):
        CouchStore("http://127.0.0.1:5984", database="runs", username="u")


def test_server_survives_anonymous_database_creation(couchdb_server):
    response = couchdb_server.request("PUT", "/anonymous_db", auth=None)
    assert response.status_code == 401
    assert couchdb_server.request("GET", "/_all_dbs").status_code == 200


# -- the on-disk server --------------------------------------------------------------------


def test_on_disk_server_keeps_documents_across_restarts(ondisk_couchdb_server):
    server = ondisk_couchdb_server
    with server.store("runs") as store:
        store.setup()
        store.register_many(new_runs("run_1", "run_2"), worker_id="h")
        claim = store.claim("run_1", worker_id="w")
        before = store.get("run_1")

        server.stop(kill=True)  # like a crash
        with server.store("runs", retries=0) as quick, pytest.raises(StoreUnavailable):
            quick.get("run_1")
        server.start()

        assert store.get("run_1") == before
        assert [doc["_id"] for doc in store.runs("pending")] == ["run_2"]
        assert store.finish(claim, {"file": "x"})["status"] == "encrypted"
        server.restart()
        assert store.get("run_1")["status"] == "encrypted"
        store.setup()  # the design document survived too


def test_a_dropped_session_is_renewed(couchdb_server, couchdb_database, couchdb_store):
    couchdb_store().register_many(new_runs("run_1"), worker_id="h")
    with couchdb_server.store(couchdb_database, auth="session") as store:
        assert store.get("run_1") is not None
        logins = store.request_count
        store._client.get_http_client().cookies.clear()  # as if the session expired
        store._client.jar.clear()
        assert store.get("run_1") is not None
        assert store.request_count - logins == 3  # refused, login again, retried


def test_on_disk_server_keeps_sessions_across_restarts(ondisk_couchdb_server):
    with ondisk_couchdb_server.store("runs", auth="session") as store:
        store.setup()
        store.register_many(new_runs("run_1"), worker_id="h")
        ondisk_couchdb_server.restart()
        assert store.claim("run_1", worker_id="w") is not None


def test_init_and_a_pass_leave_the_original_lookup_design_doc_byte_for_byte(
    couchdb_server, couchdb_database, gnupg_home, tmp_path
):
    """The original tool's ``_design/lookup`` (its own ``runfolder_id`` map and another
    view) survives ``dfarchive init`` and ``dataflow_archive --once`` untouched."""
    assert couchdb_server.request("PUT", f"/{couchdb_database}").status_code == 201
    theirs = {
        "language": "javascript",
        "views": {
            "runfolder_id": {"map": "function(doc) { emit(doc._id, doc); }"},
            "by_worker": {"map": "function(doc) { emit(doc.worker_id, 1); }"},
        },
    }
    url = f"/{couchdb_database}/_design/lookup"
    assert couchdb_server.request("PUT", url, json=theirs).status_code == 201
    before = couchdb_server.request("GET", url)
    for name in ("seq/seqA/run_1", "archives", "keys"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "keys").chmod(0o700)
    (tmp_path / "seq/seqA/run_1/.metadata_rsync_exitcode").write_text("0")
    config = tmp_path / "df_archive.yaml"
    config.write_text(
        yaml.safe_dump(
            couchdb_server.facility_config(couchdb_database, tmp_path, gnupg_home.fingerprint)
        )
    )
    for command in (["dfarchive", "init"], ["dataflow_archive", "--once"]):
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:], "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=gnupg_home.env,
        )
        assert done.returncode == 0, done.stderr
    after = couchdb_server.request("GET", url)
    assert after.content == before.content
    assert after.json()["_rev"] == before.json()["_rev"]
    with couchdb_server.store(couchdb_database) as store:
        assert store.get("run_1")["status"] == "encrypted"
