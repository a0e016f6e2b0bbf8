"""Results over AMQP for the Globus Compute SDK's Executor: the RabbitMQ topology and the
Redis records that the web service (which declares a group's queue at submit) and the
publisher (``fxbroker amqp-publisher``, which fills it) share.

That SDK's result watcher consumes ``<queue_prefix><task_group_id>`` and declares nothing,
so the queue must exist before its first submit returns. Topology, all durable::

    exchange fxbroker.results            direct; every result is published here
    queue    fxbroker.results.<tg>       the group's results: what the watcher consumes
    queue    fxbroker.ledger.<tg>        x-max-length 1: the last message published for the
                                         group, which nobody consumes (the publisher reads it
                                         back after a crash: :mod:`amqp_publisher.publisher`)
    bindings both queues to the exchange, routing key fxbroker.results.<tg>

One publish is routed to both queues at once, so the ledger always holds the newest result
the group's queue was given. Both queues expire after :data:`QUEUE_EXPIRES_MS` unused.
Another consumer may bind a queue of its own with the same routing key to see a copy.

Redis, next to :mod:`sdk.keys` (``fx`` the key prefix; a group's keys share the hash tag of
its results stream, so one Lua script may touch them on Redis Cluster)::

    fx:amqp:groups             Sorted set  task groups whose results go to AMQP, scored by
                                           their last submit (unix seconds)
    fx:{tg:<id>}:amqp_cursor   String      the last entry of the group's results stream
                                           that the broker confirmed
    fx:{tg:<id>}:amqp_lease    String      which publisher copy publishes the group (PX)
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType
from pamqp.common import FieldTable

from sdk.keys import Keys
from service_common.redis_client import RedisClient

EXCHANGE = "fxbroker.results"
QUEUE_PREFIX = "fxbroker.results."
"""What ``GET /v2/get_amqp_result_connection_url`` answers as ``queue_prefix``."""
LEDGER_PREFIX = "fxbroker.ledger."
QUEUE_EXPIRES_MS = 7 * 24 * 3600 * 1000
"""A group's queues are deleted by RabbitMQ after a week without consumers or declares:
as long as its results are kept by default (``FXBROKER_RESULT_TTL_S``). A constant, since
redeclaring a queue with other arguments fails."""
STREAM_ID_HEADER = "fxbroker-stream-id"
"""The message header naming the results-stream entry a message was made from."""


def queue_name(task_group_id: str) -> str:
    """The queue that SDK's watcher consumes for the group (and the routing key)."""
    return f"{QUEUE_PREFIX}{task_group_id}"


def ledger_name(task_group_id: str) -> str:
    return f"{LEDGER_PREFIX}{task_group_id}"


async def declare_group(channel: AbstractChannel, task_group_id: str) -> AbstractQueue:
    """Declare the group's queue, ledger and bindings (idempotent; five round trips);
    returns the ledger."""
    exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.DIRECT, durable=True)
    key = queue_name(task_group_id)
    expires: FieldTable = {"x-expires": QUEUE_EXPIRES_MS}
    queue = await channel.declare_queue(key, durable=True, arguments=expires)
    ledger = await channel.declare_queue(
        ledger_name(task_group_id),
        durable=True,
        arguments={**expires, "x-max-length": 1, "x-overflow": "drop-head"},
    )
    await queue.bind(exchange, routing_key=key)
    await ledger.bind(exchange, routing_key=key)
    return ledger


async def connect(url: str) -> aio_pika.abc.AbstractConnection:
    """A plain (not self-restoring) connection: callers reconnect, and know they did."""
    return await aio_pika.connect(url, client_properties={"connection_name": "fxbroker"})


TRANSIENT_AMQP_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,  # connection or channel closed, a nack, a refused login
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
"""Errors that mean RabbitMQ is (for now) away or refused a step that a fresh connection
may redo, not that the code is wrong."""


def amqp_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means RabbitMQ is away: an outage to wait out."""
    return isinstance(exc, TRANSIENT_AMQP_ERRORS)


async def register_group(
    redis: RedisClient, keys: Keys, task_group_id: str, *, now: float | None = None
) -> None:
    """Record that the group's results go to AMQP (from the start of its results stream);
    a later submit into it only refreshes its score. One round trip."""
    await redis.zadd(keys.amqp_groups(), {task_group_id: time.time() if now is None else now})
