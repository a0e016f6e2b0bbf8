"""Cancellation: a cancel notice stops a running task, which ends ``cancelled``; a task
cancelled while queued never starts."""

from __future__ import annotations

import asyncio

import pytest

from endpoint_agent import Agent
from sdk.states import TaskState
from tests.agent.gateway_stack import (
    GatewayEndpoint,
    assert_cancelled,
    publish_cancel,
    settings_for,
    until,
)
from tests.agent.helpers import AHOLD, HOLD, Gate, source_code

PID = source_code("pid", "import os\n\ndef pid():\n    return os.getpid()\n")


async def test_a_running_async_task_is_cancelled(endpoint: GatewayEndpoint, redis_url: str) -> None:
    ahold = await endpoint.register(AHOLD)
    gate = Gate(endpoint)
    doomed, kept = await endpoint.submit_many(
        ahold, [(gate.args(redis_url), {}), (gate.args(redis_url), {})]
    )

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started(2)
        await publish_cancel(endpoint, doomed)
        await publish_cancel(endpoint, "a-task-another-agent-holds")

        # Released only once the cancel has ended it: its BLPOP must not take the release.
        async def ended() -> bool:
            return await endpoint.state(doomed) == TaskState.CANCELLED

        await until(ended, "the cancel")
        await gate.release(1)
        await asyncio.wait_for(running, timeout=30)

    await assert_cancelled(endpoint, doomed)
    assert await endpoint.result(kept) is True
    assert sorted(await endpoint.notices()) == sorted(
        [(doomed, TaskState.CANCELLED), (kept, TaskState.SUCCESS)]
    )
    await endpoint.assert_settled()


async def test_a_running_def_task_is_stopped_and_its_worker_replaced(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    pid = await endpoint.register(PID)
    gate = Gate(endpoint)
    doomed = await endpoint.submit(hold, *gate.args(redis_url))

    async with Agent(settings_for(endpoint, engine="process", workers=1)) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        (worker_pid,) = await gate.wait_started()
        await publish_cancel(endpoint, doomed)
        await asyncio.wait_for(running, timeout=30)
        after = await endpoint.submit(pid)
        await agent.run(burst=True)

    await assert_cancelled(endpoint, doomed)
    assert await endpoint.result(after) != int(worker_pid)  # a fresh worker ran it
    assert await endpoint.notices() == [
        (doomed, TaskState.CANCELLED),
        (after, TaskState.SUCCESS),
    ]
    await endpoint.assert_settled()


async def test_a_def_task_in_a_thread_is_abandoned_when_cancelled(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    doomed = await endpoint.submit(hold, *gate.args(redis_url))
    add = await endpoint.register(source_code("add", "def add(a, b):\n    return a + b\n"))

    async with Agent(settings_for(endpoint, engine="thread", workers=1)) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started()
        await publish_cancel(endpoint, doomed)
        await asyncio.wait_for(running, timeout=30)
        after = await endpoint.submit(add, 1, 2)
        await agent.run(burst=True)  # its one worker slot is free again
        await gate.release()  # let the abandoned thread end; its outcome is dropped

    await assert_cancelled(endpoint, doomed)
    assert await endpoint.result(after) == 3
    await endpoint.assert_settled()


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_a_task_cancelled_while_queued_never_starts(
    endpoint: GatewayEndpoint, redis_url: str, engine: str
) -> None:
    # The web service cancels a queued task itself (state, notice); the agent skips it.
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    queued = await endpoint.submit(hold, *gate.args(redis_url), state=TaskState.CANCELLED)
    probe = await endpoint.submit(hold, *gate.args(redis_url), "ran")

    async with Agent(settings_for(endpoint, engine=engine)) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started(1)
        await gate.release(1)
        await asyncio.wait_for(running, timeout=30)

    assert await endpoint.redis.llen(gate.started) == 0  # only the probe ever started
    assert await endpoint.result(probe) == "ran"
    fields = await endpoint.task(queued)
    assert (fields["state"], fields.get("attempts", "0")) == (TaskState.CANCELLED, "0")
    await endpoint.assert_settled()
