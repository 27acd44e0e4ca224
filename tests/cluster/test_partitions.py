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

from .conftest import Cluster, Recovery, parse_time, poll, record_recovery

LEASE = 6.0
WORKERS = ("h1", "h2", "h3")
#: Plenty for a few 8 MiB runs at 1 s of tar per MiB, on a loaded machine.
SETTLE_SECONDS = 180.0
FENCED = "was not renewed"


def all_encrypted(count: int):
    return lambda docs: len(docs) == count and all(
        doc["status"] == "encrypted" for doc in docs.values()
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


def recovery(fault: str, doc: dict[str, Any], fault_at: float) -> Recovery:
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
        lease_expired=lease_expired,
        reclaimed=reclaimed,
        archived=parse_time(attempts[-1]["ended_at"]) - fault_at,
        attempts_counted=doc["failure_count"],
    )


def assert_reclaimed_from_or_untouched(doc: dict[str, Any], lost_host: str) -> None:
    """``doc``'s run was archived at the first attempt, or ``lost_host``'s attempt was
    reclaimed when its lease ran out (counted once: the lost host counted nothing
    itself) and another host archived it."""
    outcomes = [a["outcome"] for a in doc["attempts"]]
    if outcomes == ["encrypted"]:
        assert doc["failure_count"] == 0, doc
        return
    assert outcomes == ["failed", "encrypted"], doc["attempts"]
    first = doc["attempts"][0]
    assert holder(first) == lost_host and "lease expired" in first["error"], first
    assert holder(doc) != lost_host and doc["failure_count"] == 1, doc


def assert_untouched_for(c: Cluster, seconds: float) -> None:
    """No document changes for ``seconds`` (a host still believing it holds a run would
    heartbeat within a third of the lease)."""
    revs = {run_id: doc["_rev"] for run_id, doc in c.docs().items()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = {run_id: doc["_rev"] for run_id, doc in c.docs().items()}
        assert now == revs, "a document changed after every run was encrypted"
        time.sleep(0.5)  # watching for a change, not waiting for one


def test_worker_host_cut_off_longer_than_the_lease(cluster):
    c = cluster(lease_seconds=LEASE)
    runs = {f"run_{n}": 8 << 20 for n in range(3)}
    victim = start(c, runs, "h1")

    c.network.cut("h1")
    fault_at = time.time()
    # cut off, h1 stops its attempt by itself before its lease runs out
    poll(lambda: FENCED in c.log("h1"), "h1 fencing itself", timeout=LEASE * 2)
    c.wait_for(
        lambda docs: holder(docs[victim]) in ("h2", "h3"),
        f"{victim} taken over by another host",
        timeout=SETTLE_SECONDS,
    )
    taken = c.docs()[victim]
    time.sleep(max(0.0, fault_at + 1.5 * LEASE - time.time()))  # the outage itself: 1.5 leases
    c.network.heal("h1")

    c.wait_for(all_encrypted(len(runs)), "every run encrypted", SETTLE_SECONDS)
    docs = c.docs()
    assert_untouched_for(c, LEASE)
    c.assert_end_state(runs)
    for doc in docs.values():
        assert_reclaimed_from_or_untouched(doc, "h1")
    doc = docs[victim]
    assert holder(doc) in ("h2", "h3") and doc["failure_count"] == 1, doc
    assert taken["_rev"] != doc["_rev"]
    record_recovery(recovery("worker host cut off for longer than the lease", doc, fault_at))
