"""How long a network call may block, in one place.

On a real network a partitioned host does not get "connection refused": packets vanish
and a call waits until some timeout, if there is one. Every call dfarchive makes to
CouchDB or RabbitMQ is bounded by a value from here, chosen for its caller:

* ordinary store calls (claim, finish, the scheduler's pass) may wait a while: a slow
  store is better than a failed pass, and nothing expires meanwhile;
* a heartbeat must come back well inside the lease it renews, so a worker cut off from
  the store notices in time to stop its attempt before the lease runs out
  (:mod:`dfarchive.coordination.lease`);
* AMQP connects, reads and publishes give up instead of hanging on a dead link, and
  the broker's heartbeat notices a silent connection within seconds.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: A store request: seconds to connect, and to wait for each read of the reply.
STORE_CONNECT_SECONDS = 10.0
STORE_READ_SECONDS = 30.0
#: Extra attempts of a store request that failed to connect, timed out or got a 429/5xx.
STORE_RETRIES = 2
#: A heartbeat request waits at most this fraction of the lease (no retries: the next
#: heartbeat is the retry) ...
HEARTBEAT_FRACTION = 0.1
#: ... but never less than this, and never more than an ordinary store read.
HEARTBEAT_MIN_SECONDS = 1.0
#: A worker stops its attempt once this fraction of the lease has passed since its
#: last successful renewal: the rest of the lease is its time to stop and clean up ...
FENCE_FRACTION = 0.8
#: ... less this: run documents store times to the whole second, rounded down, so a
#: lease may end up to a second before its holder reckons.
STAMP_RESOLUTION_SECONDS = 1.0

#: AMQP (pika URL parameters), added to the broker URL unless it sets them itself.
AMQP_PARAMETERS = {
    "socket_timeout": "5",  # TCP connect
    "stack_timeout": "10",  # the whole connection handshake
    "connection_attempts": "1",  # Dramatiq reconnects by itself
    "heartbeat": "10",  # a silent connection is closed after about two of these
    "blocked_connection_timeout": "30",  # a broker blocking publishers (alarm)
}


def store_timeout() -> tuple[float, float]:
    """``(connect, read)`` seconds for an ordinary store request, as requests takes them."""
    return (STORE_CONNECT_SECONDS, STORE_READ_SECONDS)


def heartbeat_timeout(lease_seconds: float) -> float:
    """Seconds one heartbeat request may wait (to connect, and for each read)."""
    return min(max(lease_seconds * HEARTBEAT_FRACTION, HEARTBEAT_MIN_SECONDS), STORE_READ_SECONDS)


def fence_after(lease_seconds: float) -> float:
    """Seconds without a renewal after which a worker gives its attempt up."""
    return max(lease_seconds * FENCE_FRACTION - STAMP_RESOLUTION_SECONDS, lease_seconds / 2)


def amqp_url(url: str) -> str:
    """``url`` with dfarchive's AMQP timeouts added where the URL does not set them.

    A list of URLs (``;``-separated, Dramatiq's failover form) gets them on each one.
    """
    return ";".join(_with_amqp_parameters(one) for one in url.split(";"))


def _with_amqp_parameters(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged = {**AMQP_PARAMETERS, **query}
    return urlunsplit(parts._replace(query=urlencode(merged)))
