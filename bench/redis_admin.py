"""What the bench itself asks of Redis, on one Redis or on a Redis Cluster.

The services open Redis through :func:`service_common.redis_client.connect_redis`; the bench
reads figures and removes its keys behind their back, through here, so the same run works
whether its URL names one Redis (``redis://HOST:PORT/DB``) or a cluster
(``redis+cluster://HOST:PORT[,HOST:PORT...]``, every node listed a seed):

- :func:`open_redis`: a blocking client, ``redis.Redis`` or ``redis.cluster.RedisCluster``;
- :func:`primaries`: one plain client per primary (the Redis itself when there is one), for
  what is per server: ``INFO`` figures, ``SCAN``;
- :func:`info_total`, :func:`command_calls`, :func:`used_memory`: ``INFO`` figures summed over
  every primary;
- :func:`delete_matching`, :func:`count_matching`: the keys matching a pattern, found on every
  primary (a key lives on the one that serves its slot);
- :func:`topology`: "single" or "cluster of N masters", as the report and the JSON name it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import redis
import redis.cluster
from redis.exceptions import RedisClusterException

from service_common.redis_client import CLUSTER_SCHEMES, is_cluster_url

SyncRedis = redis.Redis | redis.cluster.RedisCluster
"""What :func:`open_redis` returns."""
DELETE_BATCH = 1000
"""Keys per pipeline of ``UNLINK`` in :func:`delete_matching`."""


def open_redis(url: str, *, decode_responses: bool = False) -> SyncRedis:
    """A blocking client for ``url``: ``redis.Redis.from_url`` for one Redis, a
    ``RedisCluster`` seeded with every node of a cluster URL. The caller closes it."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, decode_responses=decode_responses)
    parts = urlsplit(url)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {parts.path!r}: {url}")
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        node = urlsplit(f"//{address}")
        if not node.hostname:
            raise ValueError(f"a Redis Cluster URL lists host:port pairs: {url}")
        nodes.append(redis.cluster.ClusterNode(node.hostname, node.port or 6379))  # type: ignore[no-untyped-call]  # redis-py
    return redis.cluster.RedisCluster(
        startup_nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=CLUSTER_SCHEMES[parts.scheme] == "rediss",
        decode_responses=decode_responses,
    )


@contextmanager
def primaries(url: str) -> Iterator[list[redis.Redis]]:
    """``with primaries(url) as servers:`` one plain client per primary of a cluster, or the
    one Redis, closed when the block ends."""
    client = open_redis(url)
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            nodes = client.get_primaries()  # type: ignore[no-untyped-call]  # redis-py
            servers = [client.get_redis_connection(node) for node in nodes]
            if not servers:
                raise RedisClusterException(f"no primary serves the cluster at {url}")
            yield servers
        else:
            yield [client]
    finally:
        client.close()


def info_total(servers: list[redis.Redis], section: str, fields: tuple[str, ...]) -> float:
    """The sum of ``fields`` of ``INFO section`` over ``servers``."""
    return sum(float(server.info(section)[name]) for server in servers for name in fields)


def command_calls(servers: list[redis.Redis]) -> Counter[str]:
    """Calls per command so far (``INFO commandstats``), summed over ``servers``."""
    calls: Counter[str] = Counter()
    for server in servers:
        for name, stats in server.info("commandstats").items():
            calls[name.removeprefix("cmdstat_")] += int(stats["calls"])
    return calls


def used_memory(url: str) -> int:
    """``used_memory`` of ``INFO memory``, in bytes, summed over every primary."""
    with primaries(url) as servers:
        return int(info_total(servers, "memory", ("used_memory",)))


def topology(url: str) -> str:
    """``"single"`` for one Redis, ``"cluster of N masters"`` for a cluster (its primaries
    counted, not its URL's seeds)."""
    if not is_cluster_url(url):
        return "single"
    with primaries(url) as servers:
        return f"cluster of {len(servers)} masters"


def server_version(url: str) -> str:
    """``redis_version`` of ``INFO server`` (of the first primary of a cluster)."""
    with primaries(url) as servers:
        return str(servers[0].info("server").get("redis_version", "?"))


def _matching(server: redis.Redis, pattern: str) -> Iterator[bytes]:
    yield from server.scan_iter(match=pattern, count=5000)


def delete_matching(url: str, pattern: str) -> int:
    """Delete every key matching ``pattern`` on every primary (``SCAN``, then one ``UNLINK``
    per key, pipelined in chunks to the primary the key was found on: a cluster refuses one
    command over keys of several slots); how many went."""
    deleted = 0
    with primaries(url) as servers:
        for server in servers:
            batch: list[bytes] = []
            for key in _matching(server, pattern):
                batch.append(key)
                if len(batch) >= DELETE_BATCH:
                    deleted += _unlink(server, batch)
                    batch = []
            if batch:
                deleted += _unlink(server, batch)
    return deleted


def _unlink(server: redis.Redis, keys: list[bytes]) -> int:
    pipe = server.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


def count_matching(url: str, pattern: str) -> int:
    """How many keys match ``pattern``, over every primary."""
    with primaries(url) as servers:
        return sum(1 for server in servers for _ in _matching(server, pattern))
