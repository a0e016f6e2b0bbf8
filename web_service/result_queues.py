"""The queues the Globus Compute SDK's Executor reads results from, opened at submit.

A ``/v3`` submit with ``create_queue`` (that SDK's Executor sends it) needs the group's
queue to exist before the answer: the SDK's watcher consumes it right after and declares
nothing. :meth:`ResultQueues.open` declares it on RabbitMQ (``FXBROKER_AMQP_URL``) and
records the group in Redis for the publisher (``fxbroker amqp-publisher``), which then
fills the queue from the start of the group's results stream: results that were settled
before this call are published too (:mod:`service_common.amqp` draws the topology and keys).

Cost: the first submit into a group, one RabbitMQ round trip per declare (five) and one
Redis round trip; later submits into a group this process opened, the Redis one only.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika.abc

from sdk.keys import Keys
from service_common.amqp import amqp_unavailable, connect, declare_group, register_group
from service_common.redis_client import RedisClient
from web_service.errors import ApiError, retry_later

log = logging.getLogger(__name__)

DECLARED_MAX = 10_000
"""Groups remembered as declared by this process (then the memory starts over)."""
RETRY_AFTER_S = 5.0


class ResultQueues:
    """One lazily opened RabbitMQ connection of the web service, for declaring queues."""

    def __init__(self, url: str, redis: RedisClient, keys: Keys) -> None:
        self._url = url
        self._redis = redis
        self._keys = keys
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._declared: set[str] = set()

    async def open(self, task_group_id: str) -> None:
        """Make sure the group's queue exists and the publisher knows the group.

        Raises 503 ``AMQP_UNAVAILABLE`` (with ``Retry-After``) while RabbitMQ is away; the
        tasks are queued by then, and a retry with the same ``Idempotency-Key`` answers
        the same ids (that SDK retries a 503)."""
        if task_group_id not in self._declared:
            try:
                async with self._lock:
                    await declare_group(await self._ensure_channel(), task_group_id)
            except Exception as exc:
                if not amqp_unavailable(exc):
                    raise
                await self.aclose()
                log.warning("RabbitMQ is unavailable (%s: %s)", type(exc).__name__, exc)
                raise self.unavailable() from exc
            if len(self._declared) >= DECLARED_MAX:
                self._declared.clear()
            self._declared.add(task_group_id)
        await register_group(self._redis, self._keys, task_group_id)

    @staticmethod
    def unavailable() -> ApiError:
        return retry_later(
            503,
            "AMQP_UNAVAILABLE",
            "the RabbitMQ that carries Executor results is unavailable; retry later",
            RETRY_AFTER_S,
        )

    async def _ensure_channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        await self.aclose()
        self._connection = await connect(self._url)
        self._channel = await self._connection.channel(publisher_confirms=False)
        return self._channel

    async def aclose(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:
                if not amqp_unavailable(exc):
                    raise
