"""Results are never lost: the ws service stops twice in the middle of 10,000 results, and the
client still gets every one of them, each exactly once.

Completions are written into Redis the way an endpoint agent writes them (task hash, then a
notice on the task group's results stream), so the test decides exactly which results exist
while the ws service is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from fxbroker import AsyncClient
from sdk._base import TaskOutcome
from sdk.keys import Keys
from sdk.messages import stored_fields
from sdk.serialize import serialize
from tests.sdk.stack import Stack
from tests.sdk.workload import square

N = 10_000
WAIT_S = 60.0
"""A safety net so a broken listener fails the test instead of hanging it."""


@pytest.fixture
async def stack(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Stack]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    async with stack:
        yield stack


class Tally:
    """Every resolution per task id; wakes waiters as the count grows."""

    def __init__(self) -> None:
        self.calls: dict[str, list[TaskOutcome]] = {}
        self._grew = asyncio.Condition()

    def resolver(self, task_id: str) -> object:
        def resolve(outcome: TaskOutcome) -> None:
            self.calls.setdefault(task_id, []).append(outcome)
            asyncio.get_running_loop().create_task(self._notify())

        return resolve

    async def _notify(self) -> None:
        async with self._grew:
            self._grew.notify_all()

    async def reached(self, count: int) -> None:
        async def wait() -> None:
            async with self._grew:
                await self._grew.wait_for(lambda: len(self.calls) >= count)

        await asyncio.wait_for(wait(), WAIT_S)


async def complete(
    redis: aioredis.Redis, keys: Keys, group: str, task_ids: Sequence[str], first: int
) -> None:
    """Write ``square(first + i)`` as the result of each task, as an agent does."""
    async with redis.pipeline(transaction=False) as pipe:
        for i, task_id in enumerate(task_ids, start=first):
            pipe.hset(
                keys.task(task_id),
                mapping=stored_fields({"state": "success", "completed_at": f"{time.time():.6f}",
                         "result": serialize(i * i)}),
            )  # fmt: skip
            pipe.xadd(keys.task_group_results(group), {"task_id": task_id, "state": "success"})
        await pipe.execute()


async def test_ws_restarted_twice_amid_10000_results_loses_and_repeats_none(
    stack: Stack, aredis: aioredis.Redis
) -> None:
    s = stack.services
    assert s is not None
    async with AsyncClient(s.url, s.token, ws_url=s.ws_url) as ac:
        fid = await ac.register_function(square)
        batch = ac.create_batch()
        for i in range(N):
            batch.add(fid, args=(i,))
        task_ids = await ac.batch_run(s.idle_endpoint_id, batch)  # no agent: stays queued
        group = ac.task_group_id
        assert group is not None and len(set(task_ids)) == N
        ac.results.task_group_id = group
        tally = Tally()
        for task_id in task_ids:
            ac.results.watch(task_id, tally.resolver(task_id))  # type: ignore[arg-type]

        await complete(aredis, s.keys, group, task_ids[:4000], 0)
        await tally.reached(1000)  # results are flowing
        await stack.stop_ws()
        assert len(tally.calls) < N
        await complete(aredis, s.keys, group, task_ids[4000:7000], 4000)  # while it is down
        await stack.start_ws()
        await tally.reached(5000)
        await stack.stop_ws()
        await complete(aredis, s.keys, group, task_ids[7000:], 7000)
        await stack.start_ws()
        await tally.reached(N)

        assert ac.results.subscriptions >= 3  # it really reconnected, twice at least
        assert all(len(calls) == 1 for calls in tally.calls.values())  # each exactly once
        values = [tally.calls[t][0].value for t in task_ids]
        assert values == [i * i for i in range(N)]
        assert all(tally.calls[t][0].error is None for t in task_ids)
        assert ac.results.outstanding == 0
