"""A worker cut off from the store stops its attempt by itself, before its lease ends.

The store is reached through a relay that is made to hang: requests get no answer and
no error, as over a partitioned link. No root needed: this runs everywhere.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dfarchive.archiving.keys import resolve_recipient
from dfarchive.archiving.pipeline import ArchiveSettings
from dfarchive.coordination.attempt import AttemptOutcome, attempt_run
from dfarchive.coordination.lease import LeaseKeeper
from dfarchive.coordination.store.base import NewRun
from dfarchive.coordination.store.couchdb import CouchStore
from dfarchive.errors import StoreUnavailable
from dfarchive.plumbing import timeouts
from tests.support.cluster import make_run, parse_time, poll, slow_tar
from tests.support.relay import TcpRelay

LEASE = 5.0


@pytest.fixture
def hung_store(couchdb_server, couchdb_database):
    """``(store, relay)``: a CouchStore (lease LEASE) reaching the test server through
    a relay that ``relay.pause()`` makes hang."""
    target = urlsplit(couchdb_server.url)
    with TcpRelay(("127.0.0.1", 0), (target.hostname, target.port)) as relay:
        store = CouchStore(
            f"http://127.0.0.1:{relay.address[1]}",
            database=couchdb_database,
            username=couchdb_server.username,
            password=couchdb_server.password,
            lease_seconds=LEASE,
        )
        store.setup()
        try:
            yield store, relay
        finally:
            relay.close()
            store.close()


def test_heartbeat_requests_wait_a_fraction_of_the_lease(hung_store):
    store, relay = hung_store
    store.register_many([NewRun("run_x", "/nowhere/run_x", "seqA")], worker_id="scanner")
    claim = store.claim("run_x", worker_id="h1:1")
    relay.pause()
    started = time.monotonic()
    bound = timeouts.heartbeat_timeout(LEASE)
    with pytest.raises(StoreUnavailable, match="server unreachable"), store.bounded(bound):
        store.heartbeat(claim)
    waited = time.monotonic() - started
    # one read timeout, no retries: not the 30 s timeout and 2 retries of other calls
    assert bound <= waited < bound + 1.0, waited


def test_a_worker_whose_store_hangs_stops_its_attempt_before_its_lease_ends(
    hung_store, couchdb_server, couchdb_database, gnupg_home, tmp_path: Path, monkeypatch, caplog
):
    store, relay = hung_store
    observer = couchdb_server.store(database=couchdb_database)  # not through the relay
    monkeypatch.setenv("PATH", f"{slow_tar(tmp_path / 'slowbin')}:{os.environ['PATH']}")
    run = make_run(tmp_path / "seq" / "seqA", "run_cut", 20 << 20)  # ~20 s of tar
    store.register_many([NewRun("run_cut", str(run), "seqA")], worker_id="scanner")
    settings = ArchiveSettings(destination_path=tmp_path / "archives", keys_path=tmp_path / "keys")
    for folder in (settings.destination_path, settings.keys_path):
        folder.mkdir()
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    outcome: list[AttemptOutcome] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            attempt_run(
                store,
                "run_cut",
                worker_id="h1",
                settings=settings,
                recipient=recipient,
                sequencing_path=tmp_path / "seq",
            )
        ),
        daemon=True,
    )
    worker.start()
    poll(
        lambda: (observer.get("run_cut").get("progress") or {}).get("bytes_done", 0) > 0,
        "run_cut in flight",
        timeout=60,
    )
    assert list(settings.destination_path.iterdir()) != []  # the partial archive exists

    relay.pause()  # from now on the worker's store calls hang
    poll(
        lambda: not list(settings.destination_path.iterdir()),
        "the cut worker to stop writing and remove its partial archive",
        timeout=3 * LEASE,
        every=0.05,
    )
    stopped = time.time()
    worker.join(timeout=LEASE)  # after one bounded try to release the run uncounted

    assert not worker.is_alive(), "the attempt went on with its store unreachable"
    assert outcome == [AttemptOutcome.LOST]  # the store never answered the release either
    doc = observer.get("run_cut")
    assert stopped < parse_time(doc["lease_expires_at"])  # before anyone may take over
    assert doc["status"] == "processing" and doc["failure_count"] == 0  # counted nothing
    assert [a["outcome"] for a in doc.get("attempts", [])] == []
    assert list(settings.destination_path.iterdir()) == []  # the partial is gone
    assert list(settings.keys_path.iterdir()) == []
    assert "was not renewed" in caplog.text


def test_a_short_outage_costs_no_run_the_lease_is_renewed_soon_after(
    hung_store, couchdb_server, couchdb_database, caplog
):
    store, relay = hung_store
    observer = couchdb_server.store(database=couchdb_database)
    store.register_many([NewRun("run_blip", "/nowhere/run_blip", "seqA")], worker_id="scanner")
    claim = store.claim("run_blip", worker_id="h1:1")
    cancel = threading.Event()
    with LeaseKeeper(store, claim, cancel) as keeper:
        claimed = observer.get("run_blip")["_rev"]
        poll(lambda: observer.get("run_blip")["_rev"] != claimed, "a first heartbeat", LEASE)
        relay.pause()  # just after a renewal: the next heartbeat falls in the outage
        poll(lambda: "heartbeat failed" in caplog.text, "a failed heartbeat", LEASE)
        during = observer.get("run_blip")["_rev"]
        relay.resume()
        resumed = time.monotonic()
        poll(lambda: observer.get("run_blip")["_rev"] != during, "a renewal", LEASE, every=0.05)
        renewed_after = time.monotonic() - resumed
    assert not cancel.is_set() and not keeper.lost
    # retried at half the interval, not a whole interval after the failure
    assert renewed_after < 0.75 * keeper.interval, renewed_after
