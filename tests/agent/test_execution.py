"""Tasks run to the right outcome: results, exceptions, bad input, for each engine."""

from __future__ import annotations

import operator

import pytest

from endpoint_agent import Agent
from sdk.messages import task_created_at
from sdk.serialize import DILL_CODE, JSON_DATA, pack_buffers, serialize
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import Endpoint, source_code

ADD = source_code(
    "add",
    """
    def add(a, b=0):
        return a + b
    """,
)
BOOM = source_code(
    "boom",
    """
    def boom(message):
        raise ValueError(message)
    """,
)
GENERATOR = source_code(
    "make_generator",
    """
    def make_generator():
        return (i for i in range(3))
    """,
)
EXIT = source_code(
    "leave",
    """
    import sys

    def leave():
        sys.exit(3)
    """,
)


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_sync_functions_run_to_their_outcome(
    endpoint: GatewayEndpoint, redis_url: str, engine: str
) -> None:
    add = await endpoint.register(ADD)
    boom = await endpoint.register(BOOM)
    gen = await endpoint.register(GENERATOR)
    leave = await endpoint.register(EXIT)
    mul = await endpoint.register(serialize(operator.mul, DILL_CODE))
    sums = await endpoint.submit_many(add, [((i,), {"b": 10}) for i in range(5)])
    raised = await endpoint.submit(boom, "no luck")
    unserializable = await endpoint.submit(gen)
    exited = await endpoint.submit(leave)
    product = await endpoint.submit(mul, 6, 7)

    async with Agent(settings_for(endpoint, engine=engine)) as agent:
        await agent.run(burst=True)
        assert agent.held == 0

    assert [await endpoint.result(t) for t in sums] == [10, 11, 12, 13, 14]
    assert await endpoint.result(product) == 42
    done = await endpoint.task(sums[0])
    assert done["agent"] == "agent-1"
    assert done["attempts"] == "1"
    created = task_created_at(sums[0])  # the id carries it
    assert created is not None
    assert created <= float(done["started_at"]) <= float(done["completed_at"])
    assert 0 < await endpoint.redis.ttl(endpoint.keys.task(sums[0])) <= 7 * 24 * 3600

    record = await endpoint.failure(raised)
    assert (record["type"], record["module"], record["message"]) == (
        "ValueError",
        "builtins",
        "no luck",
    )
    assert "in boom" in record["traceback"]
    assert record["traceback"].rstrip().endswith("ValueError: no luck")

    record = await endpoint.failure(unserializable)
    assert record["type"] == "SerializationError"
    assert "result could not be serialized" in record["message"]

    record = await endpoint.failure(exited)
    assert record["type"] == "SystemExit"

    everything = [*sums, raised, unserializable, exited, product]
    notices = await endpoint.notices()
    assert sorted(notices) == sorted(
        [(t, TaskState.SUCCESS) for t in [*sums, product]]
        + [(t, TaskState.FAILED) for t in [raised, unserializable, exited]]
    )
    assert len(notices) == len(everything)
    await endpoint.assert_settled()


async def test_bad_input_fails_only_its_task(endpoint: GatewayEndpoint, redis_url: str) -> None:
    add = await endpoint.register(ADD)
    # The web service refuses such code: written straight to the store, as if corrupted.
    corrupt_code = await Endpoint.register(endpoint, "01\nthis is not base64 dill")
    not_callable = await Endpoint.register(endpoint, serialize(12))
    missing = "function-that-was-never-registered"
    garbage = await endpoint.submit(add, payload="garbage")
    corrupt_args = await endpoint.submit(
        add, payload=pack_buffers(["00\n!!not dill!!", serialize({})])
    )
    bad_code = await endpoint.submit(corrupt_code, 1)
    no_call = await endpoint.submit(not_callable)
    no_code = await endpoint.submit(missing)
    fine = await endpoint.submit(add, 1, 2)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    record = await endpoint.failure(garbage)
    assert record["type"] == "DeserializationError"
    assert record["message"] == "packed buffer is truncated (no length line)"
    record = await endpoint.failure(corrupt_args)
    assert record["type"] == "DeserializationError"
    assert record["message"].startswith("could not deserialize a '00' buffer")
    record = await endpoint.failure(bad_code)
    assert record["type"] == "DeserializationError"
    assert record["message"].startswith("could not deserialize a '01' buffer")
    record = await endpoint.failure(no_call)
    assert record["type"] == "DeserializationError"
    assert "holds a int, not a callable" in record["message"]
    record = await endpoint.failure(no_code)
    assert record["type"] == "FunctionNotFound"
    assert missing in record["message"]
    assert await endpoint.result(fine) == 3
    await endpoint.assert_settled()


async def test_disallowed_strategies_are_refused(endpoint: GatewayEndpoint, redis_url: str) -> None:
    dill_code = await endpoint.register(serialize(operator.add, DILL_CODE))
    source = await endpoint.register(ADD)
    refused_code = await endpoint.submit(dill_code, 1, 2)
    refused_args = await endpoint.submit(source, 1, 2)  # pack_payload uses dill ("00")
    allowed = await endpoint.submit(
        source, payload=pack_buffers([serialize([1, 2], JSON_DATA), serialize({}, JSON_DATA)])
    )
    settings = settings_for(endpoint, engine="thread", allowed_strategies=frozenset({"11", "st"}))

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    for task_id in (refused_code, refused_args):
        record = await endpoint.failure(task_id)
        assert record["type"] == "DeserializationError"
        assert "is not allowed here" in record["message"]
    assert await endpoint.result(allowed) == 3


async def test_async_functions_run_in_the_loop_and_notices_follow_completion_order(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    # Task i finishes only after task i+1 has, so they complete in reverse submission order.
    chain = await endpoint.register(
        source_code(
            "chain",
            """
            import asyncio

            finished = {}

            def event(i):
                return finished.setdefault(i, asyncio.Event())

            async def chain(i, n):
                if i + 1 < n:
                    await event(i + 1).wait()
                event(i).set()
                return i * 10
            """,
        )
    )
    task_ids = await endpoint.submit_many(chain, [((i, 6), {}) for i in range(6)])

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    assert [await endpoint.result(t) for t in task_ids] == [0, 10, 20, 30, 40, 50]
    assert await endpoint.notices() == [(t, TaskState.SUCCESS) for t in reversed(task_ids)]
    await endpoint.assert_settled()


async def test_async_function_that_raises_fails_with_its_traceback(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    fails = await endpoint.register(
        source_code(
            "fails_later",
            """
            import asyncio

            async def fails_later():
                await asyncio.sleep(0)
                raise KeyError("missing")
            """,
        )
    )
    task_id = await endpoint.submit(fails)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    record = await endpoint.failure(task_id)
    assert record["type"] == "KeyError"
    assert "in fails_later" in record["traceback"]
    assert await endpoint.notices() == [(task_id, TaskState.FAILED)]


async def test_a_crashed_worker_process_fails_its_task_and_the_pool_recovers(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    crash = await endpoint.register(
        source_code(
            "crash",
            """
            import os

            def crash():
                os._exit(7)
            """,
        )
    )
    add = await endpoint.register(ADD)
    crashed = await endpoint.submit(crash)

    async with Agent(settings_for(endpoint, workers=1)) as agent:
        await agent.run(burst=True)
        after = await endpoint.submit(add, 2, 3)
        await agent.run(burst=True)

    record = await endpoint.failure(crashed)
    assert record["type"] == "WorkerLost"
    assert await endpoint.result(after) == 5
    await endpoint.assert_settled()
