"""Every network call is bounded, from one place (dfarchive.plumbing.timeouts)."""

from __future__ import annotations

import pytest

from dfarchive.coordination.store.couchdb import CouchStore
from dfarchive.plumbing import timeouts
from dfarchive.service.messaging import make_broker


def test_the_broker_connection_is_bounded_and_its_heartbeat_notices_a_dead_link():
    broker = make_broker("amqp://guest:guest@192.0.2.1:5672/%2F")
    parameters = broker.parameters
    assert parameters.socket_timeout == 5.0
    assert parameters.stack_timeout == 10.0
    assert parameters.heartbeat == 10  # not the broker's 60 s: a hung link shows in ~15 s
    assert parameters.blocked_connection_timeout == 30.0
    assert parameters.connection_attempts == 1


def test_timeouts_set_in_the_broker_url_win():
    url = timeouts.amqp_url("amqp://u:p@a:5672/%2F?heartbeat=30;amqp://u:p@b:5672/%2F")
    first, second = url.split(";")
    assert "heartbeat=30" in first and "heartbeat=10" not in first
    assert "socket_timeout=5" in first and "heartbeat=10" in second
    assert first.startswith("amqp://u:p@a:5672/%2F?") and second.startswith("amqp://u:p@b:5672/")


def test_store_requests_wait_for_the_configured_connect_and_read_timeouts():
    store = CouchStore("http://127.0.0.1:5984", database="runs")
    try:
        assert store.timeout == (timeouts.STORE_CONNECT_SECONDS, timeouts.STORE_READ_SECONDS)
        with store.bounded(0.7):
            assert store._client.http_config["timeout"] == 0.7  # heartbeats: their own
        assert store._client.http_config["timeout"] == store.timeout
    finally:
        store.close()


def test_a_heartbeat_waits_a_tenth_of_the_lease_the_fence_leaves_a_fifth_and_a_second():
    assert timeouts.heartbeat_timeout(60) == pytest.approx(6.0)
    assert timeouts.heartbeat_timeout(6) == timeouts.HEARTBEAT_MIN_SECONDS == 1.0
    assert timeouts.heartbeat_timeout(3600) == timeouts.STORE_READ_SECONDS
    # the stored lease end is rounded down to the second: fence a second earlier still
    assert timeouts.fence_after(6) == pytest.approx(3.8)
    assert timeouts.fence_after(300) == pytest.approx(239)
    assert timeouts.fence_after(1) == pytest.approx(0.5)
