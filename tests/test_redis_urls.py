""":mod:`tests.redis_urls`: one Redis and a cluster opened from their URLs, and keys under a
prefix deleted from every primary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from tests.private_cluster import PrivateCluster, require_redis_cli
from tests.private_redis import require_redis_server
from tests.redis_urls import (
    ClusterURL,
    async_redis,
    delete_keys,
    parse_cluster_url,
    redis_ports,
    sync_redis,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    require_redis_server()
    require_redis_cli()
    with PrivateCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


def test_a_cluster_url_names_its_seed_nodes_tls_and_credential() -> None:
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,redis-b:7001") == ClusterURL(
        (("10.0.0.1", 7000), ("redis-b", 7001)), tls=False, username=None, password=None
    )
    assert parse_cluster_url("rediss+cluster://u:p%40ss@h:6380/") == ClusterURL(
        (("h", 6380),), tls=True, username="u", password="p@ss"
    )
    assert redis_ports("redis+cluster://h:7000,h:7001,h:7002") == (7000, 7001, 7002)
    assert redis_ports("redis://127.0.0.1:6390/0") == (6390,)
    assert redis_ports("redis://127.0.0.1/0") == (6379,)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:7000",  # one Redis, not a cluster
        "redis+cluster://h:7000/0",  # a cluster has only database 0
        "redis+cluster://h:7000?ssl_cert_reqs=none",
        "redis+cluster://h:7000,h",  # a node without its port
        "redis+cluster://h:7000,h:port",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Redis Cluster"):
        parse_cluster_url(url)


def test_a_plain_url_opens_redis_as_from_url_does(redis_url: str, key_prefix: str) -> None:
    client = sync_redis(redis_url, decode_responses=True)
    try:
        assert type(client) is redis.Redis
        client.set(f"{key_prefix}:a", "1")
        client.set(f"{key_prefix}:b", "2")
        client.set(f"{key_prefix}x:other", "3")  # another prefix: not ours
        delete_keys(redis_url, key_prefix)
        assert client.exists(f"{key_prefix}:a", f"{key_prefix}:b") == 0
        assert client.get(f"{key_prefix}x:other") == "3"
    finally:
        client.delete(f"{key_prefix}x:other")
        client.close()


def test_a_cluster_url_opens_a_cluster_client_on_every_node(cluster: PrivateCluster) -> None:
    client = sync_redis(cluster.url, decode_responses=True)
    try:
        assert isinstance(client, redis.cluster.RedisCluster)
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        assert {n.port for n in nodes} == set(cluster.ports)
        client.set("ru-sync", "v")
        assert client.get("ru-sync") == "v"
    finally:
        client.close()


async def test_the_async_twin_opens_the_same_kinds(cluster: PrivateCluster, redis_url: str) -> None:
    plain = async_redis(redis_url)
    clustered = async_redis(cluster.url, decode_responses=True)
    try:
        assert type(plain) is aioredis.Redis
        assert isinstance(clustered, aiocluster.RedisCluster)
        await clustered.set("ru-async", "w")
        assert await clustered.get("ru-async") == "w"
    finally:
        await plain.aclose()
        await clustered.aclose()


def test_delete_keys_empties_the_prefix_on_every_primary(cluster: PrivateCluster) -> None:
    prefix = "ru-del"
    client = sync_redis(cluster.url)
    try:
        assert isinstance(client, redis.cluster.RedisCluster)
        names = [f"{prefix}:{i}" for i in range(200)]  # no hash tag: spread over every slot
        for name in names:
            client.set(name, 1)
        client.set(f"{prefix}:{{tag}}:a", 1)  # hash-tagged: one slot, as the platform's keys
        client.set("ru-keep:1", 1)
        owner = client.get_node_from_key  # unannotated in redis-py
        holding = {owner(name).port for name in names}  # type: ignore[no-untyped-call]
        assert holding == set(cluster.ports)  # every primary holds some of them

        delete_keys(cluster.url, prefix)

        assert sum(int(client.exists(name)) for name in names) == 0
        assert client.exists(f"{prefix}:{{tag}}:a") == 0
        assert client.get("ru-keep:1") == b"1"
    finally:
        client.close()
