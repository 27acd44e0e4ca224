"""Real partitions: worker hosts in network namespaces lose their links mid-run.

Packets vanish (a switch port disabled, an address pinned to a MAC nobody has): TCP
connections hang rather than being refused. Whatever the fault, every run ends
``encrypted`` exactly once and restores with stock gpg + tar, no ``.partial`` is left,
no document stays ``processing``, nothing reaches the dead-letter queue, and a host
that lost its run touches neither the new holder's files nor the document.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.support.cluster import Cluster, Recovery, parse_time, poll, record_recovery
from tests.support.netns import can_build_networks

pytestmark = pytest.mark.skipif(
    can_build_networks() is not None, reason=f"cluster tests {can_build_networks()}"
)

LEASE = 6.0
#: For the cases whose holder must not fence itself: a heartbeat that is late by a
#: second on a loaded 2-core machine must still come before the fence point.
ROOMY_LEASE = 10.0
WORKERS = ("h1", "h2", "h3")
#: Plenty for a few 8 MiB runs at 1 s of tar per MiB, on a loaded machine.
SETTLE_SECONDS = 120.0
FENCED = "was not renewed"


def all_encrypted(count: int):
    return lambda docs: (
        len(docs) == count and all(doc["status"] == "encrypted" for doc in docs.values())
    )


def holder(doc: dict[str, Any]) -> str:
    """The host of the worker holding (or that last held) a run."""
    return str(doc.get("worker_id") or "").split(":")[0]


def start(c: Cluster, runs: dict[str, int], victim_host: str) -> str:
    """Scheduler and workers running, one run in flight on ``victim_host``; its id."""
    for name, size in runs.items():
        c.run_folder(name, size)
    c.scheduler()
    c.worker(victim_host)
    victim = c.wait_for(c.in_flight_on(victim_host), f"a run in flight on {victim_host}", 120)
    for host in WORKERS:
        if host != victim_host:
            c.worker(host)
    return victim


def recovery(
    fault: str, doc: dict[str, Any], fault_at: float, fenced: float | None = None
) -> Recovery:
    """Seconds from ``fault_at`` to the lease expiry, the reclaim and the archive of
    ``doc``'s run, as its attempt history tells them."""
    attempts = doc["attempts"]
    reclaims = [a for a in attempts if "lease expired" in (a.get("error") or "")]
    lease_expired = reclaimed = None
    if reclaims:
        heartbeat = re.search(r"last heartbeat (\S+)\)", reclaims[0]["error"])
        assert heartbeat is not None, reclaims[0]
        lease_expired = parse_time(heartbeat.group(1)) + LEASE - fault_at
        reclaimed = parse_time(reclaims[0]["ended_at"]) - fault_at
    return Recovery(
        fault=fault,
        outcome=f"encrypted once by {holder(doc)}",
        fenced=fenced,
        lease_expired=lease_expired,
        reclaimed=reclaimed,
        archived=parse_time(attempts[-1]["ended_at"]) - fault_at,
        attempts_counted=doc["failure_count"],
    )


def assert_reclaimed_from_or_untouched(
    doc: dict[str, Any], lost_host: str, *, by_another: bool = True
) -> None:
    """``doc``'s run was archived at the first attempt, or ``lost_host``'s attempt was
    reclaimed when its lease ran out (counted once: the lost host counted nothing
    itself) and a new attempt archived it (on another host if ``by_another``)."""
    outcomes = [a["outcome"] for a in doc["attempts"]]
    if outcomes == ["encrypted"]:
        assert doc["failure_count"] == 0, doc
        return
    assert outcomes == ["failed", "encrypted"], doc["attempts"]
    first = doc["attempts"][0]
    assert holder(first) == lost_host and "lease expired" in first["error"], first
    assert doc["failure_count"] == 1, doc
    assert not by_another or holder(doc) != lost_host, doc


def assert_untouched_for(c: Cluster, seconds: float) -> None:
    """No document changes for ``seconds`` (a host still believing it holds a run would
    heartbeat within a third of the lease)."""
    revs = {run_id: doc["_rev"] for run_id, doc in c.docs().items()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = {run_id: doc["_rev"] for run_id, doc in c.docs().items()}
        assert now == revs, "a document changed after every run was encrypted"
        time.sleep(0.5)  # watching for a change, not waiting for one


def lose_link(c: Cluster, host: str, to: str) -> None:
    """``to``: "all" (the host's switch port down), "couchdb" or "rabbitmq" (packets to
    that service only vanish; the other still answers)."""
    if to == "all":
        c.network.cut(host)
    else:
        c.network.blackhole(host, c.couch_address if to == "couchdb" else c.amqp_address)


def restore_link(c: Cluster, host: str, to: str) -> None:
    if to == "all":
        c.network.heal(host)
    else:
        c.network.unblackhole(host, c.couch_address if to == "couchdb" else c.amqp_address)


def outage(fault_at: float, seconds: float) -> None:
    """Let the outage last ``seconds`` from ``fault_at`` (the fault itself, not a wait
    for something to happen)."""
    time.sleep(max(0.0, fault_at + seconds - time.time()))


@pytest.mark.parametrize(
    ("to", "fault"),
    [
        ("all", "worker host's link down for 1.5 leases"),
        ("couchdb", "worker host's link to CouchDB only hangs for 1.5 leases"),
    ],
)
def test_a_worker_host_cut_off_longer_than_the_lease_loses_its_run_cleanly(cluster, to, fault):
    c = cluster(lease_seconds=LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(3)}
    victim = start(c, runs, "h1")

    lose_link(c, "h1", to)
    fault_at = time.time()
    # h1 stops its attempt by itself, before its lease runs out, while still cut off
    poll(lambda: FENCED in c.log("h1"), "h1 fencing itself", timeout=LEASE * 2, every=0.1)
    fenced = time.time() - fault_at
    c.wait_for(
        lambda docs: holder(docs[victim]) in ("h2", "h3"),
        f"{victim} taken over by another host",
        timeout=SETTLE_SECONDS,
    )
    taken = c.docs()[victim]
    outage(fault_at, 1.5 * LEASE)
    restore_link(c, "h1", to)

    c.wait_for(all_encrypted(len(runs)), "every run encrypted", SETTLE_SECONDS)
    assert_untouched_for(c, LEASE)  # h1, back, writes nothing
    docs = c.assert_end_state(runs)
    for doc in docs.values():
        assert_reclaimed_from_or_untouched(doc, "h1")
    doc = docs[victim]
    assert holder(doc) in ("h2", "h3") and doc["failure_count"] == 1, doc
    assert taken["_rev"] != doc["_rev"]
    record_recovery(recovery(fault, doc, fault_at, fenced))


def test_a_link_back_before_the_lease_runs_out_leaves_the_run_to_its_holder(cluster):
    c = cluster(lease_seconds=ROOMY_LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(2)}
    victim = start(c, runs, "h1")
    renewed = c.docs()[victim]["_rev"]
    poll(lambda: c.docs()[victim]["_rev"] != renewed, "a heartbeat", ROOMY_LEASE, every=0.05)
    failures = c.log("h1").count("heartbeat failed")

    c.network.cut("h1")  # just after a renewal: the next heartbeat falls in the outage
    fault_at = time.time()
    poll(
        lambda: c.log("h1").count("heartbeat failed") > failures, "a failed heartbeat", ROOMY_LEASE
    )
    c.network.heal("h1")  # back well before the lease (and h1's fence) runs out

    c.wait_for(all_encrypted(len(runs)), "every run encrypted", SETTLE_SECONDS)
    docs = c.assert_end_state(runs)
    doc = docs[victim]
    assert holder(doc) == "h1" and doc["failure_count"] == 0, doc
    assert [a["outcome"] for a in doc["attempts"]] == ["encrypted"], doc["attempts"]
    assert FENCED not in c.log("h1")
    for other in ("h2", "h3"):
        assert f"[{victim}] claimed by" not in c.log(other)  # nobody else started it
    record_recovery(recovery("worker host's link down, back before the lease ends", doc, fault_at))


def test_a_hanging_link_to_rabbitmq_only_costs_no_attempt(cluster):
    c = cluster(lease_seconds=LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(3)}
    victim = start(c, runs, "h1")

    lose_link(c, "h1", "rabbitmq")
    fault_at = time.time()
    # the store still answers: h1 keeps its lease and finishes its run meanwhile
    c.wait_for(lambda docs: docs[victim]["status"] == "encrypted", f"{victim} encrypted", 120)
    outage(fault_at, 2 * LEASE)
    restore_link(c, "h1", "rabbitmq")

    c.wait_for(all_encrypted(len(runs)), "every run encrypted", SETTLE_SECONDS)
    assert_untouched_for(c, LEASE)
    docs = c.assert_end_state(runs)
    for doc in docs.values():
        assert [a["outcome"] for a in doc["attempts"]] == ["encrypted"], doc["attempts"]
        assert doc["failure_count"] == 0
    assert holder(docs[victim]) == "h1"
    record_recovery(
        recovery("worker host's link to RabbitMQ only hangs for 2 leases", docs[victim], fault_at)
    )


def test_the_scheduler_host_partitioned_while_workers_run(cluster):
    # A longer lease here: with the scheduler cut off, nobody could reclaim a run whose
    # holder fenced itself after a slow heartbeat (a 1 s request bound, on a loaded
    # 2-core machine), so the test would wait for the healing instead.
    c = cluster(lease_seconds=ROOMY_LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(3)}
    start(c, runs, "h1")

    c.network.cut("sched")
    fault_at = time.time()
    late = {"run_late": 2 << 20}  # completed during the partition: nobody registers it
    c.run_folder("run_late", late["run_late"])
    c.wait_for(
        lambda docs: all(docs[r]["status"] == "encrypted" for r in runs),
        "the runs in the queue archived without the scheduler",
        SETTLE_SECONDS,
    )
    outage(fault_at, 2 * ROOMY_LEASE)
    assert "run_late" not in c.docs()
    c.network.heal("sched")

    everything = {**runs, **late}
    c.wait_for(all_encrypted(len(everything)), "the late run archived too", SETTLE_SECONDS)
    docs = c.assert_end_state(everything)
    for doc in docs.values():
        assert [a["outcome"] for a in doc["attempts"]] == ["encrypted"], doc["attempts"]
        assert doc["failure_count"] == 0
    record_recovery(recovery("scheduler host partitioned for 2 leases", docs["run_late"], fault_at))


def test_every_worker_host_partitioned_at_once_for_two_leases(cluster):
    c = cluster(lease_seconds=LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(4)}
    start(c, runs, "h1")
    c.wait_for(
        lambda docs: sum(doc["status"] == "processing" for doc in docs.values()) >= 3,
        "runs in flight on several hosts",
        120,
    )
    for host in WORKERS:
        c.network.cut(host)
    fault_at = time.time()
    # read after the cut: a claim landing between a read before it and the cut would
    # leave a run held (and counted when reclaimed) that the test thought was free
    held = {r: holder(d) for r, d in c.docs().items() if d["status"] == "processing"}
    poll(
        lambda: all(FENCED in c.log(host) for host in set(held.values())),
        "every host holding a run fencing itself",
        timeout=LEASE * 2,
        every=0.1,
    )
    fenced = time.time() - fault_at
    c.wait_for(
        lambda docs: all(docs[r]["status"] == "pending" for r in held),
        "every held run reclaimed",
        SETTLE_SECONDS,
    )
    outage(fault_at, 2 * LEASE)
    for host in WORKERS:
        c.network.heal(host)

    c.wait_for(all_encrypted(len(runs)), "every run encrypted", SETTLE_SECONDS)
    assert_untouched_for(c, LEASE)
    docs = c.assert_end_state(runs)
    for run_id, doc in docs.items():
        if run_id in held:
            assert_reclaimed_from_or_untouched(doc, held[run_id], by_another=False)
            assert doc["failure_count"] == 1
        else:
            assert doc["failure_count"] == 0
    slowest = max((docs[r] for r in held), key=lambda doc: doc["attempts"][-1]["ended_at"])
    record_recovery(
        recovery("every worker host partitioned for 2 leases", slowest, fault_at, fenced)
    )
