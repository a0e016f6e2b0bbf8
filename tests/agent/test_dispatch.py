"""What the agent reads and starts: backpressure, skipped tasks, async concurrency."""

from __future__ import annotations

import asyncio

from endpoint_agent import Agent
from sdk.keys import AGENT_GROUP
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import source_code

PENDING_SEEN = source_code(
    "pending_seen",
    """
    import time

    import redis

    def pending_seen(url, stream, group):
        client = redis.Redis.from_url(url)
        try:
            return client.xpending(stream, group)["pending"]
        finally:
            client.close()
            time.sleep(0.1)  # the outcomes before it are settled long before the next reads
    """,
)


async def test_sync_tasks_are_read_no_faster_than_workers_free_up(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    seen = await endpoint.register(PENDING_SEEN)
    task_ids = await endpoint.submit_many(
        seen, [((redis_url, endpoint.stream, AGENT_GROUP), {}) for _ in range(8)]
    )

    async with Agent(settings_for(endpoint, workers=2)) as agent:
        await agent.run(burst=True)

    # Each task saw, while it ran, how many entries the group held unacknowledged: the
    # tasks in the agent's hands (at most its two workers) and outcomes the gateway is
    # still settling (at most two), while it already reads for the freed workers.
    pending = [await endpoint.result(t) for t in task_ids]
    assert all(1 <= p <= 2 + 2 for p in pending), pending
    await endpoint.assert_settled()


async def test_prefetch_holds_at_most_that_many_beyond_the_workers(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    seen = await endpoint.register(PENDING_SEEN)
    task_ids = await endpoint.submit_many(
        seen, [((redis_url, endpoint.stream, AGENT_GROUP), {}) for _ in range(20)]
    )

    async with Agent(settings_for(endpoint, workers=2, prefetch=3)) as agent:
        await agent.run(burst=True)

    pending = [await endpoint.result(t) for t in task_ids]
    assert all(1 <= p <= 5 + 2 for p in pending), sorted(pending)  # + outcomes being settled
    assert max(pending) > 2 + 2, pending  # it did read ahead of the workers
    await endpoint.assert_settled()


async def test_a_second_agent_gets_what_the_first_cannot_hold(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    # Each task says it started, then blocks until the test releases it.
    hold = await endpoint.register(
        source_code(
            "hold",
            """
            import redis

            def hold(url, started, release):
                client = redis.Redis.from_url(url)
                try:
                    client.rpush(started, "1")
                    return client.blpop([release], timeout=30) is not None
                finally:
                    client.close()
            """,
        )
    )
    started = endpoint.keys.task_group_tasks("started-" + endpoint.task_group_id)
    release = endpoint.keys.task_group_tasks("release-" + endpoint.task_group_id)
    task_ids = await endpoint.submit_many(
        hold, [((redis_url, started, release), {}) for _ in range(3)]
    )
    first = settings_for(endpoint, engine="thread", workers=2, consumer="first")
    second = settings_for(endpoint, engine="thread", workers=2, consumer="second")

    async with Agent(first) as agent_1, Agent(second) as agent_2:
        run_1 = asyncio.create_task(agent_1.run(burst=True))
        for _ in range(2):
            assert await endpoint.redis.blpop([started], timeout=30) is not None
        assert agent_1.held == 2  # both workers busy: it left the third entry on the stream
        run_2 = asyncio.create_task(agent_2.run(burst=True))
        assert await endpoint.redis.blpop([started], timeout=30) is not None
        await endpoint.redis.rpush(release, "go", "go", "go")
        await asyncio.wait_for(asyncio.gather(run_1, run_2), timeout=30)

    assert [await endpoint.result(t) for t in task_ids] == [True, True, True]
    agents = [(await endpoint.task(t))["agent"] for t in task_ids]
    assert agents == ["first", "first", "second"]
    await endpoint.assert_settled()


async def test_a_task_already_cancelled_is_not_run(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    add = await endpoint.register(source_code("add", "def add(a, b):\n    return a + b\n"))
    cancelled = await endpoint.submit(add, 1, 2, state=TaskState.CANCELLED)
    ran = await endpoint.submit(add, 3, 4)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    fields = await endpoint.task(cancelled)
    assert fields["state"] == TaskState.CANCELLED
    assert "attempts" not in fields  # never started, so no attempt counted
    assert "started_at" not in fields and "result" not in fields and "agent" not in fields
    assert await endpoint.result(ran) == 7
    assert await endpoint.notices() == [(ran, TaskState.SUCCESS)]
    await endpoint.assert_settled()


async def test_many_async_tasks_run_at_once(endpoint: GatewayEndpoint, redis_url: str) -> None:
    # Every task waits until all 200 have started: it only finishes if they run together.
    barrier = await endpoint.register(
        source_code(
            "meet",
            """
            import asyncio

            arrived = []
            everyone = asyncio.Event()

            async def meet(i, total):
                arrived.append(i)
                if len(arrived) == total:
                    everyone.set()
                await everyone.wait()
                return len(arrived)
            """,
        )
    )
    task_ids = await endpoint.submit_many(barrier, [((i, 200), {}) for i in range(200)])

    async with Agent(settings_for(endpoint, workers=2, engine="thread")) as agent:
        await asyncio.wait_for(agent.run(burst=True), timeout=30)

    assert {await endpoint.result(t) for t in task_ids} == {200}
    await endpoint.assert_settled()


async def test_async_tasks_never_exceed_max_concurrency(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    # A task goes on only once `limit` run at once (or every task has arrived), so the peak
    # reaches the limit; an agent that started more would push the peak past it.
    track = await endpoint.register(
        source_code(
            "track",
            """
            import asyncio

            state = {"now": 0, "highest": 0, "arrived": 0}
            changed = asyncio.Condition()

            async def track(limit, total):
                state["now"] += 1
                state["arrived"] += 1
                state["highest"] = max(state["highest"], state["now"])
                async with changed:
                    changed.notify_all()
                    await changed.wait_for(
                        lambda: state["now"] >= limit or state["arrived"] == total
                    )
                await asyncio.sleep(0)
                state["now"] -= 1
                return state["highest"]
            """,
        )
    )
    task_ids = await endpoint.submit_many(track, [((5, 40), {}) for _ in range(40)])
    settings = settings_for(endpoint, engine="thread", max_concurrency=5)

    async with Agent(settings) as agent:
        await asyncio.wait_for(agent.run(burst=True), timeout=30)

    assert max([await endpoint.result(t) for t in task_ids]) == 5
    await endpoint.assert_settled()
