"""The broker and the one message dfarchive sends: ``archive_run(run_id)``.

The message only says "look at this run"; the claim in the store decides who works
on it, so a duplicate or redelivered message is harmless. The scheduler builds the
message directly (it needs no actor code); workers declare the actor in
:mod:`dfarchive.actors`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import ConnectionClosed, ConnectionFailed
from dramatiq.middleware import Middleware

from dfarchive.errors import BrokerError, StartupError
from dfarchive.plumbing.timeouts import amqp_url
from dfarchive.service.config import Config, add_broker_secrets, broker_url_problem

#: ``$DFARCHIVE_QUEUE`` lets several deployments (or test runs) share one RabbitMQ.
QUEUE_NAME = os.environ.get("DFARCHIVE_QUEUE", "dfarchive.archive")
ACTOR_NAME = "archive_run"
BROKER_URL_ENV = "DFARCHIVE_BROKER_URL"
#: What the broker raises when it cannot connect or loses its connection. Named one by
#: one: their old common base ``dramatiq.errors.ConnectionError`` is deprecated in
#: Dramatiq 2 and gone in 3, and its new name ``BrokerConnectionError`` is not in 1.x.
CONNECTION_ERRORS = (ConnectionFailed, ConnectionClosed)


class OnePrefetchPerThread(Middleware):
    """Each worker thread holds at most one unacknowledged message.

    Runs last hours: a worker that prefetched more would hoard runs other hosts could
    start, and RabbitMQ's queue depth would show them as unacked instead of ready.
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.queue_prefetch = worker.worker_threads


def broker_url(configured: str | None) -> str | None:
    """``$DFARCHIVE_BROKER_URL`` overrides the config's ``broker_url``. Its password is
    masked in logs and messages from now on."""
    url = os.environ.get(BROKER_URL_ENV) or configured
    if url:
        add_broker_secrets(url)
    return url


def required_broker_url(config: Config, why: str) -> str:
    """:func:`broker_url` for a process that can't run without a broker.

    Raises: StartupError naming the key; ``why`` says what needs the broker.
    """
    url = broker_url(config.broker_url)
    if url is None:
        raise StartupError(f"{config.source}: broker_url: missing; {why}")
    return url


def make_broker(url: str) -> RabbitmqBroker:
    """A RabbitMQ broker with publisher confirms and dfarchive's queue declared; its
    connects, reads and publishes are bounded (:mod:`dfarchive.plumbing.timeouts`).

    Raises: BrokerError for a malformed URL (quoting none of it).
    """
    problem = broker_url_problem(url)
    if problem:
        raise BrokerError(problem)
    broker = RabbitmqBroker(url=amqp_url(url), confirm_delivery=True)
    broker.add_middleware(OnePrefetchPerThread())
    broker.declare_queue(QUEUE_NAME)
    broker.declare_queue(FIXITY_QUEUE_NAME)
    return broker


def check_broker(broker: RabbitmqBroker, url: str) -> None:
    """Connect now and declare dfarchive's queue, so an unreachable broker is a
    start-up error rather than a failure at the first run to enqueue.

    Raises: BrokerError (one line; the URL's credentials are not in it).
    """
    parts = urlsplit(url)
    try:
        broker.declare_queue(QUEUE_NAME, ensure=True)
    except CONNECTION_ERRORS as error:
        where = f"{parts.hostname}:{parts.port or 5672}"
        raise BrokerError(f"cannot connect to RabbitMQ at {where} ({error})") from None


def connected_broker(url: str) -> RabbitmqBroker:
    """:func:`make_broker`, connected and checked by :func:`check_broker`.

    Raises: BrokerError (the broker made is closed first).
    """
    broker = make_broker(url)
    try:
        check_broker(broker, url)
    except BrokerError:
        broker.close()
        raise
    return broker


def enqueue_archive(broker: dramatiq.Broker, run_id: str) -> None:
    """Publish ``archive_run(run_id)``. Raises BrokerError if the broker is down."""
    _publish(broker, QUEUE_NAME, ACTOR_NAME, run_id)


def _publish(
    broker: dramatiq.Broker,
    queue_name: str,
    actor_name: str,
    run_id: str,
    *,
    delay_ms: int | None = None,
) -> None:
    """Send ``actor_name(run_id)`` to ``queue_name``. Raises BrokerError."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(run_id,), kwargs={}, options={}
    )
    try:
        broker.enqueue(message, delay=delay_ms)
    except CONNECTION_ERRORS as error:
        raise BrokerError(f"cannot publish {actor_name}({run_id!r}): {error}") from None


# -- fixity audits (dfarchive.coordination.fixity) -------------------------------------------------
#: Audit messages have their own queue, next to the archive queue: ``dfarchive.fixity``
#: (or ``$DFARCHIVE_QUEUE.fixity`` when that is set).
FIXITY_QUEUE_NAME = (
    "dfarchive.fixity" if QUEUE_NAME == "dfarchive.archive" else f"{QUEUE_NAME}.fixity"
)
FIXITY_ACTOR_NAME = "audit_run"
#: Dramatiq runs a worker's prefetched messages lowest priority first: archive messages
#: (priority 0) before audit messages.
FIXITY_PRIORITY = 100


def enqueue_fixity(broker: dramatiq.Broker, run_id: str, *, delay_ms: int | None = None) -> None:
    """Publish ``audit_run(run_id)`` (after ``delay_ms``). Raises BrokerError."""
    _publish(broker, FIXITY_QUEUE_NAME, FIXITY_ACTOR_NAME, run_id, delay_ms=delay_ms)
