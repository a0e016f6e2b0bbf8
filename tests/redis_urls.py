"""How a test opens Redis itself from a URL: one Redis or a Redis Cluster.

The services open Redis through their own client (:mod:`service_common.redis_client`); a test
that reads or cleans up keys behind their back opens it here, so the same test runs whether
``REDIS_URL`` names one Redis or a cluster:

- ``redis://HOST:PORT/DB`` (``rediss://`` for TLS): one Redis, opened with
  ``redis.Redis.from_url`` exactly as before.
- ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (``rediss+cluster://`` for TLS): a Redis
  Cluster, reached through redis-py's cluster client with every listed node as a seed. A
  cluster has only database 0, so the URL names none; an optional ``USER:PASSWORD@`` before
  the first node is the credential of every node.

:func:`sync_redis` and :func:`async_redis` are the twins that open a client;
:func:`delete_keys` removes the keys under a prefix from every primary of a cluster (or the one
Redis); :func:`redis_ports` lists the ports a URL names.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
"""The cluster URL schemes, each with whether it speaks TLS."""
DELETE_BATCH = 500
"""Keys per ``DEL`` in :func:`delete_keys` (a cluster client splits each batch by slot)."""


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL: its seed nodes, TLS, and the credential."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """The seed nodes, TLS and credential of a cluster URL; :class:`ValueError` for anything
    else, a database number, a query or a node without a port included."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://HOST:PORT,...): {url!r}")
    netloc, _, tail = rest.partition("/")
    if tail or "?" in netloc or "#" in netloc:
        raise ValueError(f"a Redis Cluster URL names no database, path or query: {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for node in hosts.split(","):
        parsed = urlsplit(f"//{node}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ValueError(f"a Redis Cluster node needs HOST:PORT, not {node!r} in {url!r}")
        nodes.append((parsed.hostname, port))
    return ClusterURL(tuple(nodes), CLUSTER_SCHEMES[scheme.lower()], username, password)


def redis_ports(url: str) -> tuple[int, ...]:
    """The ports ``url`` names: every seed node of a cluster, or the one Redis's (6379 by
    default)."""
    if is_cluster_url(url):
        return tuple(port for _, port in parse_cluster_url(url).nodes)
    return (urlsplit(url).port or 6379,)


def sync_redis(
    url: str, *, decode_responses: bool = False
) -> redis.Redis | redis.cluster.RedisCluster:
    """A blocking client for ``url``: ``redis.Redis.from_url`` for one Redis, a
    ``RedisCluster`` seeded with every node of a cluster URL. The caller closes it."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, decode_responses=decode_responses)
    cluster = parse_cluster_url(url)
    return redis.cluster.RedisCluster(
        startup_nodes=[
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py
            for host, port in cluster.nodes
        ],
        ssl=cluster.tls,
        username=cluster.username,
        password=cluster.password,
        decode_responses=decode_responses,
    )


def async_redis(
    url: str, *, decode_responses: bool = False
) -> aioredis.Redis | aiocluster.RedisCluster:
    """The asyncio twin of :func:`sync_redis`. The caller closes it with ``aclose()``."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, decode_responses=decode_responses)
    cluster = parse_cluster_url(url)
    return aiocluster.RedisCluster(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in cluster.nodes],
        ssl=cluster.tls,
        username=cluster.username,
        password=cluster.password,
        decode_responses=decode_responses,
    )


def delete_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:`` (a test's or a platform's own).

    On a cluster every primary is scanned in turn (a key lives on the one primary that
    serves its slot) and the keys found are deleted through the cluster client, which sends
    each to its slot's primary. Cost: one ``SCAN`` walk of each primary."""
    client = sync_redis(url)
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            primaries = redis.cluster.RedisCluster.PRIMARIES  # a cursor of each, walked to 0
            stale = list(client.scan_iter(f"{prefix}:*", count=1000, target_nodes=primaries))
        else:
            stale = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(stale), DELETE_BATCH):
            client.delete(*stale[i : i + DELETE_BATCH])
    finally:
        client.close()
