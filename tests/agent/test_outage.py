"""A Redis restart behind the gateway: the agent never exits and never sees it; the gateway
answers its outcomes only once Redis is back, and writes each once; the agent keeps them
until answered.

The platform's Redis here is a private ``redis-server`` (AOF, ``appendfsync always``) that
the test stops or kills and starts again on the same port, under the web service and the
ws_service copy; the gates that hold tasks use the shared Redis, so they work while the
platform's is down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from endpoint_agent import Agent
from sdk.keys import Keys
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, gateway_stack, settings_for, ws_url
from tests.agent.helpers import HOLD, Endpoint, Gate, source_code
from tests.private_redis import PrivateRedis

SQUARE = source_code("square", "def square(x):\n    return x * x\n")
DEADLINE_S = 60.0


@pytest.fixture
async def private_endpoint(
    private_redis: PrivateRedis, database_url: str, key_prefix: str
) -> AsyncIterator[GatewayEndpoint]:
    """An endpoint of a platform (web service, one ws_service copy) on the private Redis."""
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        async with gateway_stack(database_url, private_redis.url, key_prefix, client) as stack:
            endpoint = await stack.endpoint()
            async with stack.ws() as server:
                endpoint.gateway_url = ws_url(server)
                yield endpoint
    finally:
        await client.aclose()


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait (bounded) until ``condition()`` is true; it may be a coroutine function."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {DEADLINE_S} s")
        await asyncio.sleep(0.02)


async def notices_at_least(endpoint: GatewayEndpoint, count: int) -> bool:
    try:
        return len(await endpoint.notices()) >= count
    except (ConnectionError, OSError, aioredis.ConnectionError):
        return False  # the test's own client, while Redis restarts


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the platform logged of Redis's outage (the agent knows nothing of Redis)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("ws_service") and r.getMessage().startswith("Redis is")
    ]


async def test_outcomes_finished_while_redis_is_down_are_written_once_it_is_back(
    private_redis: PrivateRedis,
    private_endpoint: GatewayEndpoint,
    aredis: aioredis.Redis,
    keys: Keys,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = private_endpoint
    gate = Gate(Endpoint(aredis, keys))  # on the shared Redis: works during the outage
    hold = await endpoint.register(HOLD)
    task_ids = [await endpoint.submit(hold, *gate.args(redis_url), value=v) for v in (1, 2)]
    settings = settings_for(endpoint, engine="thread")

    async with Agent(settings) as agent:
        run = asyncio.create_task(agent.run())
        await gate.wait_started(2)
        await asyncio.to_thread(
            private_redis.stop
        )  # SIGTERM: Redis goes away with both tasks running
        await gate.release(2)
        await until(lambda: agent.running == 0, "both tasks finishing during the outage")
        assert agent.unanswered == 2  # finished, sent, kept until the gateway answers
        await asyncio.to_thread(private_redis.start)
        await until(lambda: notices_at_least(endpoint, 2), "both notices")
        assert not run.done()  # the loop kept going through the outage
        agent.stop()
        await run

    assert sorted(await endpoint.notices()) == sorted(
        (task_id, TaskState.SUCCESS) for task_id in task_ids
    )
    assert [await endpoint.result(t) for t in task_ids] == [1, 2]
    assert [(await endpoint.task(t))["attempts"] for t in task_ids] == ["1", "1"]
    await endpoint.assert_settled()
    # One line when the outage started, one when it ended, never one per retry (nor one
    # per stale pooled connection after the restart).
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis is unavailable") and lines[1].startswith("Redis is back")
    assert not any("lease lapsed" in r.getMessage() for r in caplog.records)
    assert not [
        r
        for r in caplog.records
        if r.name.startswith("endpoint_agent.agent") and "unavailable" in r.getMessage()
    ]  # the agent's connection never dropped


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_a_redis_restart_in_the_middle_of_a_run_loses_and_repeats_nothing(
    private_redis: PrivateRedis, private_endpoint: GatewayEndpoint, kill: bool
) -> None:
    endpoint = private_endpoint
    square = await endpoint.register(SQUARE)
    count = 400
    task_ids = await endpoint.submit_many(square, [((i,), {}) for i in range(count)])
    settings = settings_for(endpoint, engine="thread", workers=4)

    async with Agent(settings) as agent:
        run = asyncio.create_task(agent.run())
        await until(lambda: notices_at_least(endpoint, 40), "the first results")
        await asyncio.to_thread(private_redis.restart, kill=kill, down_s=0.5)
        await until(lambda: notices_at_least(endpoint, count), "every result")
        assert not run.done()
        agent.stop()
        await run

    notices = await endpoint.notices()
    assert sorted(task_id for task_id, _ in notices) == sorted(task_ids)  # each exactly once
    assert {state for _, state in notices} == {TaskState.SUCCESS}
    for i, task_id in enumerate(task_ids):
        fields = await endpoint.task(task_id)
        assert (fields["state"], fields["attempts"]) == (TaskState.SUCCESS, "1")
        assert await endpoint.result(task_id) == i * i
    await endpoint.assert_settled()


async def test_an_agent_started_while_redis_is_down_serves_once_it_is_up(
    private_redis: PrivateRedis, private_endpoint: GatewayEndpoint
) -> None:
    endpoint = private_endpoint
    square = await endpoint.register(SQUARE)
    task_id = await endpoint.submit(square, 7)
    await asyncio.to_thread(private_redis.stop)
    settings = settings_for(endpoint, engine="thread")

    async with Agent(settings) as agent:
        run = asyncio.create_task(agent.run())
        await until(lambda: agent.connected, "the agent connected to the gateway")
        await asyncio.to_thread(private_redis.start)
        await until(lambda: notices_at_least(endpoint, 1), "the result")
        agent.stop()
        await run

    assert await endpoint.result(task_id) == 49
