"""The broker and the one message dfarchive sends: ``archive_run(run_id)``.

The message only says "look at this run"; the claim in the store decides who works
on it, so a duplicate or redelivered message is harmless. The scheduler builds the
message directly (it needs no actor code); workers declare the actor in
:mod:`dfarchive.actors`.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

from .errors import DfArchiveError
from .timeouts import amqp_url

#: ``$DFARCHIVE_QUEUE`` lets several deployments (or test runs) share one RabbitMQ.
QUEUE_NAME = os.environ.get("DFARCHIVE_QUEUE", "dfarchive.archive")
ACTOR_NAME = "archive_run"
BROKER_URL_ENV = "DFARCHIVE_BROKER_URL"


class BrokerError(DfArchiveError):
    """The message broker could not be reached or refused a message."""


class OnePrefetchPerThread(Middleware):
    """Each worker thread holds at most one unacknowledged message.

    Runs last hours: a worker that prefetched more would hoard runs other hosts could
    start, and RabbitMQ's queue depth would show them as unacked instead of ready.
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.queue_prefetch = worker.worker_threads


def broker_url(configured: str | None) -> str | None:
    """``$DFARCHIVE_BROKER_URL`` overrides the config's ``broker_url``."""
    return os.environ.get(BROKER_URL_ENV) or configured


def make_broker(url: str) -> RabbitmqBroker:
    """A RabbitMQ broker with publisher confirms and dfarchive's queue declared; its
    connects, reads and publishes are bounded (:mod:`dfarchive.timeouts`)."""
    broker = RabbitmqBroker(url=amqp_url(url), confirm_delivery=True)
    broker.add_middleware(OnePrefetchPerThread())
    broker.declare_queue(QUEUE_NAME)
    return broker


def check_broker(broker: RabbitmqBroker, url: str) -> None:
    """Connect now and declare dfarchive's queue, so an unreachable broker is a
    start-up error rather than a failure at the first run to enqueue.

    Raises: BrokerError (one line; the URL's credentials are not in it).
    """
    parts = urlsplit(url)
    try:
        broker.declare_queue(QUEUE_NAME, ensure=True)
    except dramatiq.errors.ConnectionError as error:
        where = f"{parts.hostname}:{parts.port or 5672}"
        raise BrokerError(f"cannot connect to RabbitMQ at {where} ({error})") from None


def archive_message(run_id: str) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=(run_id,),
        kwargs={},
        options={},
    )


def enqueue_archive(broker: dramatiq.Broker, run_id: str) -> None:
    """Publish ``archive_run(run_id)``. Raises BrokerError if the broker is down."""
    try:
        broker.enqueue(archive_message(run_id))
    except dramatiq.errors.ConnectionError as error:
        raise BrokerError(f"cannot publish archive_run({run_id!r}): {error}") from None
