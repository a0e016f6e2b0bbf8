"""The one Redis client factory: the options every service relies on, and a real round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from service_common.redis_client import (
    MAX_CONNECTIONS,
    connect_redis,
    is_cluster_url,
    redis_unavailable,
    unblock,
)


async def test_options_are_the_services_own(redis_url: str, key_prefix: str) -> None:
    client = connect_redis(redis_url)
    try:
        options = client.connection_pool.connection_kwargs
        assert options["socket_timeout"] is None
        assert options["socket_keepalive"] is True
        assert options["decode_responses"] is True
        key = f"{key_prefix}:probe"
        await client.set(key, "v", ex=10)
        assert await client.get(key) == "v"  # decoded to str
    finally:
        await client.aclose()


async def test_more_concurrent_commands_than_connections_wait_for_one(
    redis_url: str, key_prefix: str
) -> None:
    """Past its bound the pool makes a command wait for a connection, never fail with
    "Too many connections" (which a service would take for Redis being away)."""
    name = f"{key_prefix}-bounded"
    client = connect_redis(redis_url, client_name=name, max_connections=2)
    try:
        assert isinstance(client.connection_pool, BlockingConnectionPool)
        assert connect_redis(redis_url).connection_pool.max_connections == MAX_CONNECTIONS
        keys = [f"{key_prefix}:wait-{i}" for i in range(6)]
        # Six blocked reads at once on two connections: each times out (0.1 s) in turn.
        replies = await asyncio.gather(*(client.blpop([k], timeout=0.1) for k in keys))
        assert replies == [None] * 6
        connected: Any = await client.client_list()
        assert len([c for c in connected if c["name"] == name]) == 2
    finally:
        await client.aclose()


async def test_unblock_wakes_a_blocked_read_even_one_not_yet_blocked(
    redis_url: str, key_prefix: str
) -> None:
    """The wake is sent right after the read is started, before it is likely to have
    reached the server: the retry makes it land; the read returns empty long before its
    block of a minute."""
    waiter = connect_redis(redis_url, max_connections=1)
    other = connect_redis(redis_url)
    try:
        waiter_id = int(await waiter.client_id())
        reading = asyncio.create_task(waiter.xread({f"{key_prefix}:nothing": "$"}, block=60_000))
        async with asyncio.timeout(10):
            assert await unblock(other.client_unblock, waiter_id, lambda: not reading.done())
            assert not await reading  # woken empty-handed
        assert not await unblock(
            other.client_unblock, waiter_id, lambda: False
        )  # nothing in flight: no try
    finally:
        await waiter.aclose()
        await other.aclose()


def test_a_cluster_that_reaches_no_node_is_an_outage_and_a_refused_command_is_a_mistake() -> None:
    try:
        try:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:7000")
        except RedisConnectionError as exc:
            raise RedisClusterException("Redis Cluster cannot be connected") from exc
    except RedisClusterException as exc:
        assert redis_unavailable(exc)
    assert redis_unavailable(SlotNotCoveredError("slot 12 is not covered"))
    assert redis_unavailable(ClusterDownError("The cluster is down"))
    assert not redis_unavailable(RedisClusterException("PUBLISH is blocked in a pipeline"))


async def test_a_cluster_url_opens_the_cluster_client_with_every_listed_node() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert is_cluster_url(url) and not is_cluster_url("redis://127.0.0.1:6379/0")
    client = connect_redis(url)
    try:
        assert isinstance(client, RedisCluster)
        assert [(n.host, n.port) for n in client.startup_nodes] == [
            ("127.0.0.1", 7000),
            ("127.0.0.1", 7001),
        ]
    finally:
        await client.aclose()
    with pytest.raises(ValueError, match="only database 0"):
        connect_redis("redis+cluster://127.0.0.1:7000/3")
