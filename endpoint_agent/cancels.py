"""Cancel notices: the agent's subscription to its endpoint's cancel channel.

The web service publishes :class:`~sdk.messages.CancelNotice` JSON on
``keys.endpoint_cancel(endpoint_id)`` for a task that was ``running`` when its owner
cancelled it. Every agent of the endpoint hears it; the one holding the task stops it
(``on_cancel(task_id)``), the others ignore it.

Pub/sub is fire-and-forget: the subscription is made before the agent reads its first
task, so a task this agent started cannot have been cancelled unheard, except while the
subscription is broken; it is then made again (after a short pause), and a notice sent in
between is lost: the task runs to its end. A queued task needs no notice: the web service
marks it ``cancelled`` itself, and the agent's start script skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sdk.keys import Keys

log = logging.getLogger(__name__)

RESUBSCRIBE_S = 1.0


class CancelListener:
    """``await start()`` subscribes; notices then call ``on_cancel``; ``await stop()``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        endpoint_id: str,
        *,
        on_cancel: Callable[[str], object],
    ) -> None:
        self._redis = redis
        self._channel = keys.endpoint_cancel(endpoint_id)
        self._on_cancel = on_cancel
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe (so notices published from now on are heard) and start listening."""
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._listen(), name="fxbroker-cancel-listener")

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

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (RedisError, OSError):
                log.warning("the cancel subscription broke; subscribing again", exc_info=True)
                await asyncio.sleep(RESUBSCRIBE_S)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.subscribe(self._channel)
                continue
            if message is None or message.get("type") != "message":
                continue
            task_id = parse_notice(message.get("data"))
            if task_id is None:
                log.warning("ignoring a malformed cancel notice: %r", message.get("data"))
                continue
            self._on_cancel(task_id)


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
