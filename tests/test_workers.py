"""Distributed workers, for real: `dramatiq dfarchive.actors` processes, a scheduler
process, RabbitMQ and the CouchDB-compatible server. Every run must end encrypted
exactly once, whatever happens to the workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.amqp import message_count
from tests.support.deployment import Deployment
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent


def all_encrypted(count: int):
    return lambda docs: (
        len(docs) == count and all(d["status"] == "encrypted" for d in docs.values())
    )


def test_two_hosts_archive_twelve_runs_exactly_once(deployment):
    d = deployment()
    for n in range(12):
        d.run_folder(f"run_{n:02d}", size=(n + 1) << 20)
    d.scheduler()
    d.worker("hostA")
    d.worker("hostB")
    docs = d.wait_for(all_encrypted(12), "12 runs encrypted")
    hosts = set()
    for run_id, doc in docs.items():
        assert doc["failure_count"] == 0
        assert [a["outcome"] for a in doc["attempts"]] == ["encrypted"], run_id
        hosts.add(doc["worker_id"])  # the host name alone, as in the original schema
        assert doc["claimed_by"].startswith(f"{doc['worker_id']}:"), doc["claimed_by"]
        assert Path(doc["archive"]["file"]).stat().st_size == doc["archive"]["size"]
        assert Path(doc["archive"]["key_file"]).is_file()
    assert hosts == {"hostA", "hostB"}
    assert sorted(p.name for p in (d.tmp / "archives").iterdir()) == [
        f"run_{n:02d}.tar.gpg" for n in range(12)
    ]
    assert d.partials() == []
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0
    for run_id in docs:
        restored = d.restore(run_id)
        assert (restored / "RunInfo.xml").read_text() == f"<RunInfo id='{run_id}'/>"
        assert (restored / "big.cbcl").stat().st_size == (int(run_id[-2:]) + 1) << 20


def test_killed_worker_run_is_reclaimed_and_archived_by_the_other(deployment):
    d = deployment(lease_seconds=3)
    d.run_folder("run_big", size=2 << 30)
    d.scheduler()
    victim = d.worker("hostA", threads=1)
    docs = d.wait_for(
        lambda docs: (
            docs.get("run_big", {}).get("status") == "processing"
            and (docs["run_big"].get("progress") or {}).get("bytes_done", 0) > 0
        ),
        "run_big in progress on hostA",
    )
    assert docs["run_big"]["worker_id"] == "hostA"
    assert docs["run_big"]["claimed_by"].startswith("hostA:")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    d.worker("hostB", threads=1)
    docs = d.wait_for(all_encrypted(1), "run_big encrypted by hostB", timeout=240)
    doc = docs["run_big"]
    assert doc["worker_id"] == "hostB"
    assert doc["failure_count"] == 1
    assert "lease expired" in doc["attempts"][0]["error"]
    assert d.partials() == []


def test_a_run_that_always_fails_ends_failed_after_max_attempts(deployment):
    d = deployment(max_attempts=3)
    run = d.run_folder("run_doomed")
    d.run_folder("run_fine")
    d.scheduler()
    d.wait_for(lambda docs: "run_doomed" in docs, "registration")
    # the folder disappears after registration: every attempt fails in pre-flight
    for path in sorted(run.rglob("*"), reverse=True):
        path.unlink()
    run.rmdir()
    d.worker("hostA")
    docs = d.wait_for(
        lambda docs: (
            docs["run_doomed"]["status"] == "failed" and docs["run_fine"]["status"] == "encrypted"
        ),
        "run_doomed failed",
    )
    doom = docs["run_doomed"]
    assert doom["failure_count"] == 3
    assert [a["outcome"] for a in doom["attempts"]] == ["failed"] * 3
    assert "does not exist" in doom["last_error"]
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0


def test_sigterm_with_short_shutdown_timeout_releases_the_run(deployment):
    d = deployment(lease_seconds=6)  # heartbeats (and progress) every 2 s
    d.run_folder("run_big", size=6 << 30)
    d.scheduler()
    first = d.worker("hostA", threads=1, shutdown_timeout_ms=1000)
    d.wait_for(
        lambda docs: (
            docs.get("run_big", {}).get("status") == "processing"
            and (docs["run_big"].get("progress") or {}).get("bytes_done", 0) > 0
        ),
        "run_big in progress",
    )
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    docs = d.wait_for(lambda docs: docs["run_big"]["status"] == "pending", "run_big released")
    assert docs["run_big"]["failure_count"] == 0
    assert docs["run_big"]["attempts"][-1]["outcome"] == "released"
    assert d.partials() == []
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0


def exactly_once(doc: dict) -> bool:
    return doc["failure_count"] == 0 and [a["outcome"] for a in doc["attempts"]] == ["encrypted"]


def in_flight(count: int):
    return lambda docs: sum(d["status"] == "processing" for d in docs.values()) >= count


@pytest.fixture
def short_consumer_timeout(amqp_url) -> Iterator[None]:
    """RabbitMQ's consumer_timeout at 5 s for this test, checked every second (channels
    check it on their tick, 60 s apart by default), restored afterwards."""

    def rabbit_env(expression: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "eval", expression], check=True, capture_output=True, timeout=60
        )

    def set_timeout(value: str) -> None:
        rabbit_env(f"application:set_env(rabbit, consumer_timeout, {value}).")

    before = subprocess.run(
        ["rabbitmqctl", "eval", "application:get_env(rabbit, consumer_timeout)."],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    set_timeout("5000")
    rabbit_env("application:set_env(rabbit, channel_tick_interval, 1000).")
    try:
        yield
    finally:
        set_timeout(before.removeprefix("{ok,").removesuffix("}") if "ok" in before else "1800000")
        rabbit_env("application:set_env(rabbit, channel_tick_interval, 60000).")  # default


def test_a_run_outlasting_consumer_timeout_is_archived_exactly_once(
    deployment, short_consumer_timeout
):
    d = deployment()
    d.slow_tar(seconds_per_mib=2.0)
    d.run_folder("run_slow", size=8 << 20)  # ~16 s of tar: three times the consumer timeout
    d.worker("hostA", threads=1)
    d.worker("hostB", threads=1)
    d.scheduler()
    docs = d.wait_for(all_encrypted(1), "run_slow encrypted", timeout=240)
    assert exactly_once(docs["run_slow"])
    assert [p.name for p in (d.tmp / "archives").iterdir()] == ["run_slow.tar.gpg"]
    logs = "".join(p.read_text() for p in d.tmp.glob("worker-*.log"))
    assert "[run_slow] not claimable" in logs  # the redelivery happened, and was harmless


def test_a_process_per_run_archives_runs_side_by_side(deployment):
    """The layout the README recommends for a worker host, ``--processes 2 --threads 1``:
    each process holds one run at a time, and both are at work at once."""
    d = deployment()
    d.slow_tar(seconds_per_mib=0.5)
    for n in range(3):
        d.run_folder(f"run_{n}", size=8 << 20)
    d.scheduler()
    d.worker("hostA", processes=2, threads=1)
    docs = d.wait_for(in_flight(2), "two runs in flight")
    holders = {doc["claimed_by"] for doc in docs.values() if doc["status"] == "processing"}
    assert len({holder.split(":")[1] for holder in holders}) == 2, holders  # two processes
    docs = d.wait_for(all_encrypted(3), "all runs encrypted", timeout=240)
    for doc in docs.values():
        assert exactly_once(doc), doc
    assert sorted(p.name for p in (d.tmp / "archives").iterdir()) == [
        f"run_{n}.tar.gpg" for n in range(3)
    ]
    assert d.partials() == []
    for run_id in docs:
        restored = d.restore(run_id)
        assert (restored / "RunInfo.xml").read_text() == f"<RunInfo id='{run_id}'/>"


def test_broker_connections_closed_mid_run(deployment):
    d = deployment()
    d.slow_tar(seconds_per_mib=1.0)
    for n in range(3):
        d.run_folder(f"run_{n}", size=8 << 20)
    d.scheduler()
    d.worker("hostA", threads=2)
    d.wait_for(in_flight(2), "two runs in flight")
    subprocess.run(
        ["rabbitmqctl", "close_all_connections", "dfarchive test: broker hiccup"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    docs = d.wait_for(all_encrypted(3), "all runs encrypted after the hiccup", timeout=240)
    for doc in docs.values():
        assert exactly_once(doc), doc
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0
    assert d.partials() == []


def test_store_server_restarted_mid_run(
    tmp_path, ondisk_couchdb_server, amqp_url, queue_name, gnupg_home
):
    d = Deployment(
        tmp_path,
        ondisk_couchdb_server,
        "runs_ondisk",
        amqp_url,
        queue_name,
        gnupg_home,
        lease_seconds=60,  # heartbeats every 20 s: the one at 20 s falls in the outage
    )
    try:
        d.slow_tar(seconds_per_mib=1.0)
        for n in range(2):
            d.run_folder(f"run_{n}", size=45 << 20)  # ~45 s of tar: outlives the outage
        d.scheduler()
        d.worker("hostA", threads=2)
        d.wait_for(in_flight(2), "two runs in flight")
        ondisk_couchdb_server.stop(kill=True)  # a crash: no graceful connection draining
        time.sleep(30)  # the outage itself: 30 s, the heartbeat due at 20 s fails
        ondisk_couchdb_server.start()
        docs = d.wait_for(all_encrypted(2), "runs encrypted after the restart", timeout=240)
        for doc in docs.values():
            assert exactly_once(doc), doc
        assert d.partials() == []
        assert "scheduling pass failed" in (tmp_path / "scheduler.log").read_text()
        assert "heartbeat failed" in (tmp_path / "worker-hostA.log").read_text()
    finally:
        d.stop_all()


def test_broker_restarted_mid_run(deployment):
    d = deployment()
    d.slow_tar(seconds_per_mib=1.0)
    for n in range(3):
        d.run_folder(f"run_{n}", size=10 << 20)
    d.scheduler()
    d.worker("hostA", threads=2)
    d.wait_for(in_flight(2), "two runs in flight")
    for command in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", command], check=True, capture_output=True, timeout=120)
    docs = d.wait_for(all_encrypted(3), "all runs encrypted after the restart", timeout=240)
    for doc in docs.values():
        assert exactly_once(doc), doc
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0
    assert d.partials() == []


def test_queue_depth_shows_the_backlog_as_ready(deployment):
    d = deployment()
    d.slow_tar(seconds_per_mib=1.0)
    for n in range(5):
        d.run_folder(f"run_{n}", size=30 << 20)
    d.scheduler()
    d.worker("hostA", threads=1)
    d.wait_for(in_flight(1), "one run in flight")
    queue: dict = {}

    def four_ready_one_unacked() -> bool:
        queue.clear()
        queue.update(
            requests.get(
                f"http://127.0.0.1:15672/api/queues/%2F/{d.queue}",
                auth=("guest", "guest"),
                timeout=10,
            ).json()
        )
        return (queue.get("messages_ready"), queue.get("messages_unacknowledged")) == (4, 1)

    wait_until(  # every 0.5 s: the management API refreshes its counters every few seconds
        four_ready_one_unacked, 60, "4 messages ready and 1 unacknowledged", every=0.5,
        detail=lambda: json.dumps(queue)[:500],
    )  # fmt: skip


def test_a_worker_whose_recipient_became_unusable_claims_nothing(deployment):
    """The recipient's key removed after the worker started: the run it claimed goes back
    to pending uncounted, one CRITICAL line, and later messages are dropped unclaimed
    (the scheduler sends them again after its re-enqueue window)."""
    d = deployment()
    d.worker("hostA", threads=1)
    log = d.tmp / "worker-hostA.log"
    wait_for_text(log, "ready")
    home = d.gnupg_home
    home.gpg("--yes", "--delete-secret-and-public-key", home.fingerprint)
    d.run_folder("run_a")
    d.run_folder("run_b")
    d.scheduler()
    docs = d.wait_for(
        lambda docs: any(doc.get("last_error") for doc in docs.values()), "a run released"
    )
    released = next(doc for doc in docs.values() if doc.get("last_error"))
    other = "run_b" if released["_id"] == "run_a" else "run_a"
    wait_for_text(log, f"[{other}] not taken: the GPG recipient is unusable")
    docs = d.docs()
    assert (released["status"], released["failure_count"]) == ("pending", 0)
    assert "the GPG recipient is unusable" in released["last_error"]
    assert "no public key found" in released["last_error"]
    assert docs[other]["status"] == "pending" and "claim_token" not in docs[other]
    assert docs[other]["enqueued_at"] is not None  # sent again once the window has passed
    text = log.read_text()
    assert text.count("CRITICAL") == 1, text
    assert message_count(d.amqp_url, d.queue + ".XQ") == 0


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    wait_until(
        lambda: path.exists() and text in path.read_text(errors="replace"),
        timeout, f"{text!r} in {path}", every=0.1,
        detail=lambda: "\n" + path.read_text()[-3000:],
    )  # fmt: skip


def test_a_worker_that_fails_its_start_up_checks_stops_and_takes_no_message(
    deployment, amqp_url
):
    """Dramatiq ignores most errors from a worker's boot hook: the worker used to take
    messages anyway and drop each one ("worker booted without its checks")."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the store is unreachable
    d = deployment(statusdb={"url": f"http://127.0.0.1:{port}", "database": "runs"})
    broker = RabbitmqBroker(url=amqp_url)
    try:
        broker.declare_queue(d.queue)
        broker.enqueue(dramatiq.Message(d.queue, "archive_run", ("run_x",), {}, {}))
    finally:
        broker.close()
    worker = d.worker("h1")
    wait_until(
        lambda: worker.poll() is not None, 120, "the worker to stop", every=0.2, detail=d.logs
    )
    log = (d.tmp / "worker-h1.log").read_text()
    assert worker.returncode != 0, log
    assert "worker cannot start" in log and f"127.0.0.1:{port}" in log
    assert "booted without its checks" not in log
    assert message_count(amqp_url, d.queue) == 1  # still there for a healthy worker
    assert message_count(amqp_url, d.queue + ".XQ") == 0
