"""Blocking stream reads over many streams, on connections kept for them, that another task
may wake: :class:`BlockingReads`.

Three readers of a service process wait on many streams at once: the results push
(``ws_service.fanout``), the endpoint gateway's reader (``ws_service.gateway.reader``) and
the long poll's watcher (:mod:`service_common.stream_watch`). Each sends one blocking
``XREAD``/``XREADGROUP`` naming every stream it watches, on a connection of its own, and
wakes it (``CLIENT UNBLOCK`` from another connection) when a stream joins that the read in
flight does not name. This module is that connection and that wake, for one Redis and for a
Redis Cluster alike:

* On one Redis, one read names every stream: one connection, one ``CLIENT ID`` asked once.
* On a Redis Cluster, one command may only name keys of one hash slot, so the streams are
  split by slot and each slot gets a *lane*: a connection of its own to the primary that
  serves the slot. A read with streams in several slots blocks on every lane at once and
  returns as soon as one has entries, after waking the others (their replies, entries
  included, are merged: an ``XREADGROUP`` that delivered entries on a woken lane loses
  none). A lane unused for :data:`LANE_IDLE_S` is closed, so the connections follow the
  slots in use, not every slot ever seen. A lane whose slot moved (``MOVED``, a failover)
  is closed and the client's slot map refreshed; the caller's retry opens the right one.

:meth:`BlockingReads.wake` wakes every read in flight (a wake that comes before the read
blocks on the server is tried again, see :func:`~service_common.redis_client.unblock`).
Errors propagate to the caller, which waits Redis outages out as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import MovedError

from service_common.redis_client import RedisClient, server_client, unblock

LANE_IDLE_S = 60.0
"""A cluster lane no read used for this long is closed."""

Reply = list[tuple[str, list[tuple[str, dict[str, str]]]]]
"""``XREAD``/``XREADGROUP``'s reply: ``(stream, [(entry id, fields)])`` per stream with entries."""


@dataclass(eq=False)
class _Lane:
    """A connection of its own for blocking reads on one server, and how to wake it."""

    client: aioredis.Redis
    wake: Callable[[int], Awaitable[bool]]
    """Sends ``CLIENT UNBLOCK id`` to the lane's server from another connection."""
    client_id: int | None = None
    reading: bool = False
    used_at: float = field(default_factory=time.monotonic)


class BlockingReads:
    """Blocking reads for one reader of ``redis`` (see the module docstring)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._lanes: dict[int, _Lane] = {}
        self._woken = False  # a wake came since the read in flight began
        self.lanes_opened = 0
        """Lanes opened so far, for tests."""

    @property
    def reading(self) -> bool:
        """True while a read is in flight."""
        return any(lane.reading for lane in self._lanes.values())

    async def xread(self, streams: Mapping[str, str], *, count: int, block_ms: int) -> Reply:
        """``XREAD COUNT count BLOCK block_ms STREAMS ...`` from each stream's cursor."""

        async def read(client: aioredis.Redis, part: dict[str, str]) -> Any:
            return await client.xread(dict(part), count=count, block=block_ms)  # type: ignore[arg-type]

        return await self._read(streams, read)

    async def xreadgroup(
        self, group: str, consumer: str, streams: Mapping[str, str], *, count: int, block_ms: int
    ) -> Reply:
        """``XREADGROUP GROUP group consumer COUNT count BLOCK block_ms STREAMS ...``."""

        async def read(client: aioredis.Redis, part: dict[str, str]) -> Any:
            return await client.xreadgroup(group, consumer, dict(part), count=count, block=block_ms)  # type: ignore[arg-type]

        return await self._read(streams, read)

    async def wake(self) -> bool:
        """Wake every read in flight (one still opening its lane then does not block);
        True when a blocked one woke."""
        self._woken = True
        woke = False
        for lane in list(self._lanes.values()):
            woke = await self._wake(lane) or woke
        return woke

    async def aclose(self) -> None:
        """Close every lane's connection."""
        lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            await lane.client.aclose()

    async def _read(
        self,
        streams: Mapping[str, str],
        read: Callable[[aioredis.Redis, dict[str, str]], Awaitable[Any]],
    ) -> Reply:
        self._woken = False
        parts = self._by_slot(streams)
        await self._close_idle(keep=parts.keys())
        if len(parts) == 1:
            ((slot, part),) = parts.items()
            return _pairs(await self._read_lane(slot, part, read))
        tasks = [
            asyncio.ensure_future(self._read_lane(slot, part, read)) for slot, part in parts.items()
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await self.wake()  # the others return now, with whatever they hold
            replies = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        merged: Reply = []
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
            merged.extend(_pairs(reply))
        return merged

    def _by_slot(self, streams: Mapping[str, str]) -> dict[int, dict[str, str]]:
        parts: dict[int, dict[str, str]] = {}
        if isinstance(self._redis, aioredis.RedisCluster):
            for stream, cursor in streams.items():
                parts.setdefault(self._redis.keyslot(stream), {})[stream] = cursor
        else:
            parts[0] = dict(streams)
        return parts

    async def _read_lane(
        self,
        slot: int,
        part: dict[str, str],
        read: Callable[[aioredis.Redis, dict[str, str]], Awaitable[Any]],
    ) -> Any:
        lane = self._lanes.get(slot)
        if lane is None:
            lane = self._lanes[slot] = await self._open(next(iter(part)))
        lane.used_at = time.monotonic()
        try:
            if lane.client_id is None:
                lane.client_id = int(await lane.client.client_id())
            if self._woken:
                return None  # woken while the lane opened: the caller looks again first
            lane.reading = True
            try:
                return await read(lane.client, part)
            finally:
                lane.reading = False
        except Exception as exc:
            # Whatever broke (the connection, the server, a moved slot), the next read
            # starts from a fresh lane and a fresh CLIENT ID.
            if self._lanes.get(slot) is lane:
                del self._lanes[slot]
            with contextlib.suppress(Exception):
                await lane.client.aclose()
            if isinstance(exc, MovedError) and isinstance(self._redis, aioredis.RedisCluster):
                with contextlib.suppress(Exception):
                    await self._redis.nodes_manager.initialize()
            raise

    async def _open(self, stream: str) -> _Lane:
        redis = self._redis
        client = await server_client(redis, stream)
        self.lanes_opened += 1
        if not isinstance(redis, aioredis.RedisCluster):

            async def wake_one(client_id: int) -> bool:
                return bool(await redis.client_unblock(client_id))

            return _Lane(client, wake_one)
        node = redis.get_node_from_key(stream)

        async def wake_on_node(client_id: int) -> bool:
            reply = await redis.execute_command("CLIENT UNBLOCK", client_id, target_nodes=node)
            return bool(reply)

        return _Lane(client, wake_on_node)

    async def _wake(self, lane: _Lane) -> bool:
        client_id = lane.client_id
        if client_id is None or not lane.reading:
            return False
        return await unblock(lane.wake, client_id, lambda: lane.reading)

    async def _close_idle(self, keep: Any) -> None:
        if len(self._lanes) <= 1:
            return
        now = time.monotonic()
        for slot, lane in list(self._lanes.items()):
            if slot not in keep and not lane.reading and now - lane.used_at > LANE_IDLE_S:
                del self._lanes[slot]
                await lane.client.aclose()


def _pairs(reply: Any) -> Reply:
    """A RESP2 stream read reply (redis-py's default shape) as a list; ``[]`` when empty."""
    if not reply:
        return []
    return [(str(stream), list(entries)) for stream, entries in reply]
