"""Small results ride in their completion notice, so pushing them reads no task hash.

An agent settles through one ws_service copy while the subscriber listens on another, so
every result reaches the subscriber through the results stream (not the same-process push).
Redis ``MONITOR`` shows every command the services send (scripts' own commands are marked
``lua`` and left out: they are the settle, not the push)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from sdk.keys import Keys
from sdk.serialize import deserialize, serialize
from sdk.states import TaskState
from service_common.agent_protocol import TaskOutcome
from service_common.tasks.settle import INLINE_MAX_CHARS
from tests.ws.gateway_helpers import AgentClient, Stack, bearer, success

FRAME_WAIT_S = 10.0
"""Safety nets so a broken service fails the test instead of hanging it; no timing claims."""
SENTINEL_WAIT_S = 0.1


class Monitor:
    """The task-hash reads (``HGETALL``/``HMGET`` outside scripts) of one key prefix."""

    def __init__(self, keys: Keys) -> None:
        self.task_prefix = keys.task("")[:-1]  # "<prefix>:{task:"
        self.sentinel = keys.task("monitor-sentinel")
        self.stop = keys.task("monitor-stop")
        self.reads: list[str] = []
        self.seen_sentinel = asyncio.Event()
        """Set at each sight of the sentinel read; :meth:`settle` clears it first."""

    async def listen(self, redis: aioredis.Redis) -> None:
        """Record until the stop key is read."""
        async with redis.monitor() as monitor:
            async for command in monitor.listen():
                words = command["command"].split()
                if command.get("client_type") == "lua" or len(words) < 2:
                    continue
                if words[1] == self.stop:
                    return
                if words[1] == self.sentinel:
                    self.seen_sentinel.set()
                elif words[0].upper() in ("HGETALL", "HMGET") and words[1].startswith(
                    self.task_prefix
                ):
                    self.reads.append(words[1])

    async def settle(self, redis: aioredis.Redis) -> None:
        """Wait until every command sent so far has come through the monitor (the sentinel
        read is sent again while the monitor may not have started yet)."""
        self.seen_sentinel.clear()
        for _ in range(int(FRAME_WAIT_S / SENTINEL_WAIT_S)):
            await redis.get(self.sentinel)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SENTINEL_WAIT_S):
                    await self.seen_sentinel.wait()
                    return
        raise AssertionError("the monitor saw nothing")


@contextlib.asynccontextmanager
async def monitoring(redis_url: str, keys: Keys) -> AsyncIterator[Monitor]:
    monitor = Monitor(keys)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    task = asyncio.create_task(monitor.listen(redis))
    try:
        await monitor.settle(redis)  # the monitor is live before the test goes on
        yield monitor
    finally:
        await redis.get(monitor.stop)
        async with asyncio.timeout(FRAME_WAIT_S):
            await task
        await redis.aclose()


async def test_small_results_are_pushed_without_reading_task_hashes(
    stack: Stack, redis_url: str, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    group, task_ids = await stack.ann.submit(eid, fid, 21)
    big = serialize("x" * (2 * INLINE_MAX_CHARS))
    async with (
        stack.ws() as agent_url,
        stack.ws() as subscriber_url,
        connect(subscriber_url + "/v1/results", additional_headers=bearer(stack.ann_token)) as ws,
    ):
        # The subscription's owner check reads the group's first task (its submitter); the
        # pushes are watched from then on.
        await ws.send(json.dumps({"type": "subscribe", "task_group_id": group, "cursor": "0"}))
        async with asyncio.timeout(FRAME_WAIT_S):
            assert json.loads(await ws.recv())["type"] == "subscribed"
        async with (
            monitoring(redis_url, keys) as monitor,
            AgentClient.connect(agent_url, credential) as agent,
        ):
            tasks = sorted(await agent.take(21), key=lambda t: task_ids.index(t.task_id))
            *small, last = tasks
            await agent.report([success(task, i) for i, task in enumerate(small)])
            bulky = TaskOutcome(
                last.task_id, last.delivery_id, TaskState.SUCCESS, completed_at=0.0, result=big
            )
            await agent.report([bulky])
            items: dict[str, Any] = {}
            while len(items) < 21:
                async with asyncio.timeout(FRAME_WAIT_S):
                    frame = json.loads(await ws.recv())
                items.update({i["task_id"]: i for i in frame.get("results", [])})
            await monitor.settle(aredis)
    assert [deserialize(items[t.task_id]["result"]) for t in small] == list(range(20))
    assert items[last.task_id]["result"] == big
    # Only the big result's hash was read to push it.
    assert monitor.reads == [keys.task(last.task_id)]
