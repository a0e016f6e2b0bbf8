"""Cancel notices: a subscription to one endpoint's cancel channel (the agent's Redis mode), or
to every endpoint's (the gateway: one subscription per process, however many endpoints).

The web service publishes :class:`~sdk.messages.CancelNotice` JSON on
``keys.endpoint_cancel(endpoint_id)`` for a task that was ``running`` when its owner
cancelled it. Every agent of the endpoint hears it; the one holding the task stops it
(``on_cancel(task_id)``), the others ignore it.

Pub/sub is fire-and-forget: the subscription is made before the agent reads its first
task, so a task this agent started cannot have been cancelled unheard, except while the
subscription is broken (Redis away or restarting); it is then made again with the shared
backoff (:mod:`service_common.retry`, the outage logged once), and a notice sent in between
is lost: the task runs to its end. A queued task needs no notice: the web service marks it
``cancelled`` itself, and the agent's start script skips it. On a Redis Cluster the
subscription is made on one primary (a cluster delivers every ``PUBLISH`` to every node),
another one after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from sdk.keys import Keys
from service_common.redis_client import RedisClient, redis_unavailable, server_client
from service_common.retry import DEFAULT_BACKOFF, Outage

log = logging.getLogger(__name__)


class CancelListener:
    """``await start()`` subscribes; notices then call ``on_cancel``; ``await stop()``."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        endpoint_id: str | None,
        *,
        on_cancel: Callable[[str], object],
        outage: Outage,
    ) -> None:
        self._redis = redis
        self._outage = outage
        # None: every endpoint's channel (the gateway serves many endpoints on one
        # subscription; a notice names its task, which only that task's holder acts on).
        self._pattern = endpoint_id is None
        self._channel = (
            keys.endpoint_cancel_pattern()
            if endpoint_id is None
            else keys.endpoint_cancel(endpoint_id)
        )
        self._on_cancel = on_cancel
        self._pubsub: Any = None
        self._server: aioredis.Redis | None = None  # the subscription's own client
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe (so notices published from now on are heard) and start listening.

        Raises when Redis is away; nothing is left open then."""
        self._pubsub = await self._subscribe()
        self._task = asyncio.create_task(self._listen(), name="fxbroker-cancel-listener")

    async def _subscribe(self) -> Any:
        await self._close_server()
        server = self._server = await server_client(self._redis)
        pubsub: Any = server.pubsub(ignore_subscribe_messages=True)
        try:
            if self._pattern:
                await pubsub.psubscribe(self._channel)
            else:
                await pubsub.subscribe(self._channel)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            await self._close_server()
            raise
        return pubsub

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(RedisError, OSError):
                await server.aclose()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
        await self._close_server()

    async def _listen(self) -> None:
        while True:
            started = self._outage.now()
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (RedisError, RedisClusterException, OSError) as exc:
                if redis_unavailable(exc):
                    self._outage.failed(exc, attempt_started=started)
                else:
                    log.exception("the cancel subscription failed; subscribing again")
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
                self._pubsub = await self._resubscribe()
                continue
            if message is None or message.get("type") not in ("message", "pmessage"):
                continue
            task_id = parse_notice(message.get("data"))
            if task_id is None:
                log.warning("ignoring a malformed cancel notice: %r", message.get("data"))
                continue
            self._on_cancel(task_id)

    async def _resubscribe(self) -> Any:
        """Subscribe again, waiting out the outage with the shared backoff."""
        failures = 0
        while True:
            failures += 1
            await asyncio.sleep(DEFAULT_BACKOFF.delay_s(failures))
            started = self._outage.now()
            try:
                pubsub = await self._subscribe()
            except (RedisError, RedisClusterException, OSError) as exc:
                self._outage.failed(exc, attempt_started=started)
                continue
            self._outage.recovered()
            return pubsub


def parse_notice(data: Any) -> str | None:
    """The task id of a ``{"task_id": ...}`` notice, or ``None`` when it is malformed."""
    try:
        notice = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(notice, dict) or not isinstance(notice.get("task_id"), str):
        return None
    task_id: str = notice["task_id"]
    return task_id or None
