"""RabbitMQ for the tests: the broker on 127.0.0.1:5672 (DFARCHIVE_TEST_AMQP_URL
overrides). A test that can't reach it fails saying how to start it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pika
import pytest

AMQP_URL = os.environ.get("DFARCHIVE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as error:
        pytest.fail(
            f"RabbitMQ is not reachable at {AMQP_URL} ({error!r}); start it with "
            "`rabbitmq-server -detached` (or set DFARCHIVE_TEST_AMQP_URL)",
            pytrace=False,
        )
    return AMQP_URL


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A queue name of this test's own; the queue and its .DQ/.XQ are deleted after,
    and so is the fixity queue workers declare beside it (``NAME.fixity``)."""
    name = f"dfarchive.test.{uuid.uuid4().hex[:12]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for base in (name, f"{name}.fixity"):
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(base + suffix)
    connection.close()


def message_count(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()
