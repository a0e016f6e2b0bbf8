"""1,000 ``async def`` tasks that each sleep a second run together on one agent."""

from __future__ import annotations

import asyncio

from endpoint_agent import Agent
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import source_code

NAP = source_code(
    "nap",
    """
    import asyncio
    import time

    async def nap(seconds):
        started = time.time()
        await asyncio.sleep(seconds)
        return started, time.time()
    """,
)


async def test_1000_sleeping_async_tasks_finish_together(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    nap = await endpoint.register(NAP)
    task_ids = await endpoint.submit_many(nap, [((1.0,), {}) for _ in range(1000)])
    settings = settings_for(endpoint, engine="thread", workers=2)

    async with Agent(settings) as agent:
        await asyncio.wait_for(agent.run(burst=True), timeout=60)

    spans = [await endpoint.result(t) for t in task_ids]
    # Every task started before any finished: all 1,000 slept at the same time.
    assert max(started for started, _ in spans) < min(done for _, done in spans)
    assert len(await endpoint.notices()) == 1000
    await endpoint.assert_settled()
