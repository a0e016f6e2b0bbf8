"""Scripts called by SHA (service_common.lua): no SCRIPT EXISTS per pipeline, and a script
cache emptied under the pipeline (a Redis restart, SCRIPT FLUSH) costs one reload, with
every call run exactly once. On a private redis-server, so command counts are this test's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from sdk.keys import Keys
from service_common.lua import MAX_UNITS, CrossSlotKeys, Lua, execute_pipeline, slot_groups
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


SUM = Lua(
    "local t = 0 for k = 1, #KEYS do t = t + redis.call('INCRBY', KEYS[k], ARGV[k]) end return t",
    unit=["task"],
)


async def test_a_batch_script_runs_every_unit_of_a_batch_in_one_call(
    client: aioredis.Redis,
) -> None:
    names = [Keys(prefix="lua").task(str(i)) for i in range(600)]  # of many slots
    await SUM(keys=["warm"], args=[0], client=client)  # loads it
    await client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    calls_made = slot_groups(client, names)
    assert [len(call) for call in calls_made] == [MAX_UNITS, MAX_UNITS, 600 - 2 * MAX_UNITS]
    for call in calls_made:
        await SUM(keys=[names[i] for i in call], args=[1] * len(call), client=pipe)
    assert sum(await execute_pipeline(pipe)) == 600
    assert (await calls(client)).get("evalsha") == len(calls_made)
    assert {await client.get(name) for name in names} == {"1"}


def test_on_a_cluster_a_batch_goes_as_one_call_per_slot() -> None:
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # not connected: only its kind
    keys = Keys(prefix="lua")
    names = [keys.task(str(i)) for i in range(50)] + [keys.task("0")] * 300
    groups = slot_groups(cluster, names)
    assert sorted(i for call in groups for i in call) == list(range(len(names)))
    for call in groups:
        assert len(call) <= MAX_UNITS
        assert len({key_slot(names[i].encode()) for i in call}) == 1
    assert len(groups) == 51  # the 300 of one slot go as two calls


async def test_a_batch_script_refuses_a_batch_a_cluster_could_not_run() -> None:
    keys = Keys(prefix="lua")
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)
    two_slots = [keys.task("x"), keys.task("y")]
    assert len({key_slot(k.encode()) for k in two_slots}) == 2
    with pytest.raises(CrossSlotKeys, match="more than one hash slot"):
        await SUM(keys=two_slots, args=[1, 1], client=cluster)
    with pytest.raises(CrossSlotKeys, match="1 per unit"):
        await SUM(keys=[], args=[], client=cluster)
