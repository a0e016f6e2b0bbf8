"""Bounded fan-in: 300 agents of 300 endpoints on one ws_service copy, each served its own
endpoint's tasks, while the copy holds no more Redis connections than its documented bound
(``gateway_redis_connections``, counted by client name in ``CLIENT LIST``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import TypeVar

import httpx
import redis.asyncio as aioredis

from tests.ws.gateway_helpers import AgentClient, Owner, hello, success, unique, web_service
from web_service.accounts import create_user
from web_service.schema import upgrade
from ws_service.server import ResultServer
from ws_service.settings import WsSettings

AGENTS = 300
TASKS_EACH = 2
BOUND = 6
CONCURRENCY = 50
T = TypeVar("T")


async def bounded(jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` at most :data:`CONCURRENCY` at a time; results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def connections(aredis: aioredis.Redis, name: str) -> int:
    return sum(1 for client in await aredis.client_list() if client.get("name") == name)


async def test_300_agents_share_a_bounded_number_of_redis_connections(
    database_url: str, redis_url: str, key_prefix: str, aredis: aioredis.Redis
) -> None:
    started = time.monotonic()
    await asyncio.to_thread(upgrade, database_url)
    _, token = await create_user(database_url, "ann")
    name = unique("fxt-fan-in")
    async with (
        web_service(database_url, redis_url, key_prefix) as web_url,
        httpx.AsyncClient(
            base_url=web_url,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=CONCURRENCY),
            timeout=60,  # 300 registrations at once on a busy machine: slow is not wrong here
        ) as http,
    ):
        owner = Owner(http)
        fid = await owner.function()
        endpoints = await bounded([lambda i=i: owner.endpoint(f"ep-{i}") for i in range(AGENTS)])
        submitted = await bounded(
            [lambda eid=eid: owner.submit(eid, fid, TASKS_EACH) for eid, _ in endpoints]
        )
        settings = WsSettings(
            redis_url=redis_url,
            web_url=web_url,
            key_prefix=key_prefix,
            port=0,
            block_ms=1000,
            client_name=name,
            gateway_redis_connections=BOUND,
        )
        async with ResultServer(settings) as server, AsyncExitStack() as stack:
            url = f"ws://127.0.0.1:{server.port}"
            agents: list[AgentClient] = await bounded(
                [
                    lambda i=i, credential=credential: stack.enter_async_context(
                        AgentClient.connect(url, credential, hello(f"agent-{i}"))
                    )
                    for i, (_, credential) in enumerate(endpoints)
                ]
            )
            # Each asks for more than its endpoint holds: it must get exactly its own.
            received = await asyncio.gather(
                *(agent.take(TASKS_EACH, grant=TASKS_EACH + 3) for agent in agents)
            )
            peak = await connections(aredis, name)
            answers = await asyncio.gather(
                *(
                    agent.report([success(t) for t in tasks])
                    for agent, tasks in zip(agents, received, strict=True)
                )
            )
            peak = max(peak, await connections(aredis, name))
            rounds = server.gateway.reader.rounds

    for (_, task_ids), tasks in zip(submitted, received, strict=True):
        assert sorted(t.task_id for t in tasks) == sorted(task_ids)
    assert all(len(a.delivery_ids) == TASKS_EACH and not a.refused for a in answers)
    assert 0 < peak <= BOUND, peak
    assert rounds < AGENTS * TASKS_EACH  # reads were shared, not one per agent
    assert time.monotonic() - started < 120  # a bound on the test, not a speed claim
