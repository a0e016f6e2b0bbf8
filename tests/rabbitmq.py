"""RabbitMQ for the tests of Executor results (``tests/amqp``, ``tests/e2e``): ``AMQP_URL``,
else the machine's broker on loopback (``.ci/run`` starts it); skipped where none listens
and ``AMQP_URL`` is unset.

Every group a test makes has a fresh id, so its queues (``fxbroker.results.<id>``,
``fxbroker.ledger.<id>``) are the test's own; :class:`Broker` deletes those it was told
about, never the shared exchange or anything else."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import pytest

from service_common.amqp import EXCHANGE, ledger_name, queue_name

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("AMQP_URL")
    if url:
        return url
    if not _listening(DEFAULT_AMQP_URL):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 and AMQP_URL is not set")
    return DEFAULT_AMQP_URL


@dataclass
class Broker:
    """A test's own connection, the queues it made, and a tap on a group's results."""

    channel: aio_pika.abc.AbstractChannel
    made: list[str] = field(default_factory=list)

    def group(self) -> str:
        """A fresh task group id whose queues are deleted after the test."""
        tg = str(uuid.uuid4())
        self.made += [queue_name(tg), ledger_name(tg)]
        return tg

    async def tap(self, task_group_id: str) -> aio_pika.abc.AbstractQueue:
        """A queue of the test's own that gets a copy of every message of the group."""
        name = f"fxbroker-test-tap.{uuid.uuid4()}"
        self.made.append(name)
        exchange = await self.channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await self.channel.declare_queue(name, durable=False)
        await queue.bind(exchange, routing_key=queue_name(task_group_id))
        return queue

    async def drain(self, queue_name_: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Every message in the queue now (acknowledged, so taken off it)."""
        queue = await self.channel.declare_queue(queue_name_, passive=True)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        return got


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        state = Broker(channel)
        yield state
        for name in state.made:
            await channel.queue_delete(name)
    finally:
        await connection.close()
