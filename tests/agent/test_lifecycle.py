"""Starting, beating and stopping: heartbeat, stop() from another thread, signals."""

from __future__ import annotations

import asyncio
import os
import signal

from endpoint_agent import Agent, run_agent
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import source_code

ADD = source_code("add", "def add(a, b):\n    return a + b\n")


async def test_heartbeat_describes_the_agent(endpoint: GatewayEndpoint, redis_url: str) -> None:
    settings = settings_for(endpoint, engine="thread", workers=3)

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    key = endpoint.keys.endpoint_status(endpoint.endpoint_id)
    status = await endpoint.redis.hgetall(key)
    assert status["agent"] == "agent-1"
    assert status["engine"] == "thread"
    assert status["workers"] == "3"
    assert status["capacity"] == str(3 + 1000)
    assert status["running"] == "0"
    assert (status["held"], status["accelerators"], status["draining"]) == ("0", "", "0")
    assert status["host"] and status["version"]
    assert float(status["heartbeat_at"]) > 0
    # It lives three of the gateway's heartbeat intervals (5 s): gone soon after the agent.
    assert 0 < await endpoint.redis.pttl(key) <= 15_000


async def test_stop_from_another_thread_finishes_what_was_read(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    add = await endpoint.register(ADD)
    first = await endpoint.submit(add, 1, 1)
    notices = endpoint.keys.task_group_results(endpoint.task_group_id)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        running = asyncio.create_task(agent.run())
        # Block on the task group's stream until the first result is written.
        assert await endpoint.redis.xread({notices: "0"}, block=30_000)
        await asyncio.to_thread(agent.stop)
        await asyncio.wait_for(running, timeout=30)
        assert agent.held == 0
        # run() can be started again after a stop.
        second = await endpoint.submit(add, 2, 2)
        await agent.run(burst=True)

    assert await endpoint.result(first) == 2
    assert await endpoint.result(second) == 4
    await endpoint.assert_settled()


async def test_run_agent_stops_gracefully_on_sigterm(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    add = await endpoint.register(ADD)
    task_id = await endpoint.submit(add, 20, 22)
    notices = endpoint.keys.task_group_results(endpoint.task_group_id)
    settings = settings_for(endpoint, engine="thread")

    running = asyncio.create_task(run_agent(settings))
    assert await endpoint.redis.xread({notices: "0"}, block=30_000)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=30)

    assert await endpoint.result(task_id) == 42
    assert await endpoint.notices() == [(task_id, TaskState.SUCCESS)]
    # The handler was removed again: SIGTERM is back to its default.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
