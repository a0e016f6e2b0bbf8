"""Scripts called by SHA (service_common.lua): no SCRIPT EXISTS per pipeline, and a script
cache emptied under the pipeline (a Redis restart, SCRIPT FLUSH) costs one reload, with
every call run exactly once. On a private redis-server, so command counts are this test's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service_common.lua import Lua, execute_pipeline
from tests.private_redis import PrivateRedis

BUMP = Lua("return redis.call('INCRBY', KEYS[1], ARGV[1])", keys=["task"])
FAIL = Lua("return redis.error_reply('BAD no such thing')", keys=[])


@pytest.fixture
async def client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        yield redis
    finally:
        await redis.aclose()


async def calls(redis: aioredis.Redis) -> dict[str, int]:
    stats: Any = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_pipeline_of_scripts_asks_nothing_about_them(client: aioredis.Redis) -> None:
    await BUMP(keys=["warm"], args=[1], client=client)  # loads it
    await client.config_resetstat()
    replies: list[Any] = []
    for _ in range(5):
        pipe = client.pipeline(transaction=False)
        for i in range(3):
            await BUMP(keys=[f"k{i}"], args=[i + 1], client=pipe)
        replies = await execute_pipeline(pipe)
    assert replies == [5, 10, 15]
    seen = await calls(client)
    assert seen.get("evalsha") == 15
    assert "script|exists" not in seen and "script|load" not in seen and "eval" not in seen
    assert [await client.get(f"k{i}") for i in range(3)] == ["5", "10", "15"]


async def test_an_emptied_script_cache_is_reloaded_once_and_nothing_runs_twice(
    client: aioredis.Redis,
) -> None:
    await BUMP(keys=["a"], args=[1], client=client)
    await client.script_flush()
    pipe = client.pipeline(transaction=False)
    await BUMP(keys=["a"], args=[10], client=pipe)
    pipe.incr("plain")
    await BUMP(keys=["b"], args=[7], client=pipe)
    replies = await execute_pipeline(pipe)
    assert replies == [11, 1, 7]  # in the pipeline's order, each run once
    assert (await client.get("a"), await client.get("plain"), await client.get("b")) == (
        "11",
        "1",
        "7",
    )
    await client.script_flush()
    assert await BUMP(keys=["a"], args=[1], client=client) == 12  # a direct call reloads too


async def test_other_errors_are_raised_after_the_pipeline_ran(client: aioredis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.incr("before")
    await FAIL(keys=[], args=[], client=pipe)
    with pytest.raises(ResponseError, match="BAD no such thing"):
        await execute_pipeline(pipe)
    assert await client.get("before") == "1"
    with pytest.raises(ResponseError, match="BAD no such thing"):
        await FAIL(keys=[], args=[], client=client)
