"""A small cluster per test: worker hosts with network stacks of their own.

``cluster`` builds, for one test: a bridge; the CouchDB-compatible test server on the
bridge's first address; a TCP relay to the machine's RabbitMQ (which listens on
loopback only) on its second; and, on demand, hosts (network namespaces with their own
address and host name) running ``dramatiq dfarchive.actors`` or the scheduler. All
hosts share the destination and keys folders, as NFS mounts would. The fixture tears
all of it down, processes first, even when the test fails.

Building namespaces needs root: without it these tests skip, saying so. CI runs as
root, so there they run. Select them with ``pytest tests/cluster``.

Each fault test records what recovery cost (:func:`support.record_recovery`); the
table is printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import AMQP_PORT, RECOVERIES, Cluster, seconds_text
from tests.support.couchdb import NodeCouchServer
from tests.support.gpg import GnupgHome
from tests.support.netns import Network, can_build_networks, leftovers
from tests.support.relay import TcpRelay

_networks = itertools.count()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECOVERIES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("network partitions: recovery")
    write("| fault | outcome | attempt stopped | lease expiry | reclaimed | archived | counted |")
    write("| --- | --- | --- | --- | --- | --- | --- |")
    for r in RECOVERIES:
        times = (r.fenced, r.lease_expired, r.reclaimed, r.archived)
        cells = [r.fault, r.outcome, *map(seconds_text, times), str(r.attempts_counted)]
        write(f"| {' | '.join(cells)} |")


@pytest.fixture
def cluster(
    tmp_path: Path, amqp_url: str, queue_name: str, gnupg_home: GnupgHome
) -> Iterator[Callable[..., Cluster]]:
    """Factory: ``cluster(**config)`` builds this test's cluster (once); torn down after."""
    why_not = can_build_networks()
    if why_not is not None:
        pytest.skip(f"cluster tests {why_not}")
    pid = os.getpid()
    prefix = f"dfa{pid % 100000}"
    subnet = f"10.{200 + (pid >> 8) % 50}.{(pid + next(_networks)) % 256}"
    made: list[Cluster] = []
    with contextlib.ExitStack() as cleanup:
        network = Network(prefix, subnet)
        cleanup.callback(lambda: _assert_no_leftovers(prefix))
        cleanup.callback(network.close)

        def build(**settings: Any) -> Cluster:
            assert not made, "one cluster per test"
            couch_address, amqp_address = network.create(service_addresses=2)
            couch = NodeCouchServer(log_path=tmp_path / "couchdb.log", host=couch_address)
            cleanup.callback(couch.stop)
            couch.start()
            relay = TcpRelay((amqp_address, AMQP_PORT), ("127.0.0.1", AMQP_PORT))
            cleanup.callback(relay.close)
            built = Cluster(
                tmp_path, network, couch, relay, amqp_url, queue_name, gnupg_home, settings
            )
            cleanup.callback(built.store.close)
            cleanup.callback(built.stop)
            cleanup.callback(lambda: _heal_all(network))
            made.append(built)
            return built

        yield build


def _heal_all(network: Network) -> None:
    """Bring every switch port back up, so processes can shut down cleanly."""
    for name in network.hosts:
        with contextlib.suppress(RuntimeError):
            network.heal(name)


def _assert_no_leftovers(prefix: str) -> None:
    left = leftovers(prefix)
    assert left == [], f"namespaces or links left behind: {left}"
