"""The one way a service opens Redis, and what counts as Redis being away.

Every service opens its client with :func:`connect_redis` and waits out the errors
:func:`redis_unavailable` accepts with the shared retry policy (:mod:`service_common.retry`).

A URL names one Redis (``redis://host:port/db``, ``rediss://`` with TLS, ``unix://path``) or a
Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` with TLS),
any reachable nodes of it, from which the client learns the rest. The client is then redis-py's
:class:`~redis.asyncio.RedisCluster`; :data:`RedisClient` is either kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.typing import EncodableT

RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster
"""What :func:`connect_redis` returns: a client of one Redis or of a Redis Cluster."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that name a Redis Cluster, and the scheme of each of its nodes."""

CONNECT_TIMEOUT_S = 5.0
"""How long opening one connection may take before it counts as Redis being away."""

MAX_CONNECTIONS = 512
"""The most Redis connections one client (one service process) opens by default: far below
Redis's own limit (10,000 clients) even with several copies of every service."""
POOL_WAIT_S = 30.0
"""How long a command waits for a free pooled connection before it fails as if Redis were
away (the service then answers 503 with Retry-After)."""

TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # refused, reset, closed by the server; also LOADING (BusyLoadingError)
    RedisTimeoutError,
    NoScriptError,  # Redis restarted and forgot its scripts: the retry loads them again
    MasterDownError,
    ReadOnlyError,  # a failover in progress: the old primary is now a replica
    TryAgainError,
    ClusterDownError,  # a cluster with slots not served (a primary down, no replica yet)
    SlotNotCoveredError,
    MovedError,  # slots moved (a failover or resharding) while the client's map was old
    AskError,
    OSError,
)
"""Errors that mean Redis is (for now) away, not that the command was wrong."""


class _HiredisPacking:
    """Commands packed by hiredis's C ``pack_command`` (about ten times faster than redis-py's
    asyncio connection, which packs in Python even when hiredis parses the replies: a fifth of
    the web service's submit path and a tenth of the gateway's in the profiles). Anything
    hiredis refuses (a bool, a bytearray, None) goes to redis-py's own packer, which accepts
    or refuses it exactly as before."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        head = args[0]
        if isinstance(head, str) and " " in head:  # "CLIENT SETNAME": words sent apart
            args = (*head.split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]  # bytearray: below
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


class _Connection(_HiredisPacking, aioredis.Connection):
    pass


class _SSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


class _UnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


_CONNECTIONS: dict[str, type[aioredis.Connection | aioredis.UnixDomainSocketConnection]] = {
    "redis": _Connection,
    "rediss": _SSLConnection,
    "unix": _UnixConnection,
}


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (see the module docstring)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect_redis(
    url: str, *, client_name: str | None = None, max_connections: int = MAX_CONNECTIONS
) -> RedisClient:
    """An asyncio Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    Replies are decoded to ``str``. There is no per-reply socket timeout (redis-py's default
    before 6): it wraps every reply of a pipeline in an asyncio timeout, a quarter of the
    submit path's time in the profile; TCP keepalive finds a dead peer instead, and opening
    a connection gives up after :data:`CONNECT_TIMEOUT_S`. redis-py retries nothing by
    itself, so a command that may have run is never sent twice behind the caller's back:
    callers retry what is safe to retry (see :func:`redis_unavailable`). redis-py parses
    replies with hiredis, and hiredis packs the commands too (:class:`_HiredisPacking`).
    Nothing connects until the first command; the caller closes the client with ``await
    client.aclose()``.

    ``client_name`` names every connection (``CLIENT SETNAME``, seen in ``CLIENT LIST``).
    ``max_connections`` bounds the pool: a command that finds every connection busy waits
    up to :data:`POOL_WAIT_S` for one instead of opening another. (redis-py's own default
    pool refuses the 101st concurrent command with "Too many connections", which a busy
    service took for Redis being away and answered with 503s.)

    A cluster URL gives a :class:`~redis.asyncio.RedisCluster` with the same options, at most
    ``max_connections`` per node, which retries no command either (it still follows
    ``MOVED`` and ``ASK`` redirections, which run a command on the right node, not twice).
    """
    if is_cluster_url(url):
        return _connect_cluster(url, client_name=client_name, max_connections=max_connections)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": None,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
    }
    if client_name is not None:
        options["client_name"] = client_name
    connection_class = _CONNECTIONS.get(urlsplit(url).scheme)
    if connection_class is not None:
        options["connection_class"] = connection_class
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT_S, **options
    )
    return aioredis.Redis.from_pool(pool)


def _connect_cluster(
    url: str, *, client_name: str | None, max_connections: int
) -> aioredis.RedisCluster:
    parts = urlsplit(url)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {parts.path!r}: {url}")
    nodes: list[ClusterNode] = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        node = urlsplit(f"//{address}")
        if not node.hostname:
            raise ValueError(f"a Redis Cluster URL lists host:port pairs: {url}")
        nodes.append(ClusterNode(node.hostname, node.port or 6379))
    return aioredis.RedisCluster(
        startup_nodes=nodes,
        username=parts.username or None,
        password=parts.password or None,
        ssl=CLUSTER_SCHEMES[parts.scheme] == "rediss",
        client_name=client_name,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), 0),
    )


async def server_client(redis: RedisClient, key: str | None = None) -> aioredis.Redis:
    """A client of its own (a pool of its own) to one server of ``redis``: the Redis itself,
    or on a cluster the primary serving ``key`` (any primary when ``key`` is ``None``), with
    ``redis``'s connection options. For what needs one server's connection: a blocked read,
    a subscription (a cluster delivers every ``PUBLISH`` on every node). Close it with
    ``await client.aclose()``."""
    if not isinstance(redis, aioredis.RedisCluster):
        pool = redis.connection_pool
        return aioredis.Redis.from_pool(
            aioredis.ConnectionPool(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )
    await redis.initialize()
    node = redis.get_node_from_key(key) if key is not None else redis.get_random_primary_node()
    if node is None:
        raise ClusterDownError(f"no node serves the hash slot of {key!r}")
    return aioredis.Redis.from_pool(
        aioredis.ConnectionPool(
            connection_class=node.connection_class,
            **{**node.connection_kwargs, "host": node.host, "port": node.port},
        )
    )


def node_url(url: str) -> str:
    """A one-node URL for a cluster ``url`` (its first node, plain ``redis://``); ``url``
    itself when it names one Redis. For tools that speak to one server."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if scheme is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    first = hosts.split(",")[0]
    return urlunsplit((scheme, f"{userinfo}@{first}" if userinfo else first, "/0", "", ""))


def redis_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis is away (down, restarting, loading its data, failing
    over) rather than that a command was wrong: an outage to wait out.

    A cluster client that reaches no node, or finds a slot unserved, says so with a
    :class:`~redis.exceptions.RedisClusterException` raised from the connection error (or
    a :class:`~redis.exceptions.SlotNotCoveredError`); the same class also reports
    mistakes (a command a cluster refuses), which stay mistakes."""
    if isinstance(exc, TRANSIENT_REDIS_ERRORS):
        return True
    if isinstance(exc, RedisClusterException):
        cause = exc.__cause__ or exc.__context__
        return cause is not None and cause is not exc and redis_unavailable(cause)
    return False


UNBLOCK_TRIES = 50
"""A wake that finds the blocked read not yet blocked on the server tries again this often."""
UNBLOCK_PAUSE_S = 0.002


async def unblock(
    send: Callable[[int], Awaitable[bool]],
    client_id: int,
    still_waiting: Callable[[], bool],
    *,
    tries: int = UNBLOCK_TRIES,
    pause_s: float = UNBLOCK_PAUSE_S,
) -> bool:
    """Wake the connection ``client_id`` out of its blocking read (``send(client_id)`` sends
    ``CLIENT UNBLOCK`` on another connection to the same server); True once it woke.

    The blocking command may be sent but not yet blocked on the server; the wake is then
    tried again after ``pause_s``, at most ``tries`` times, and only while ``still_waiting()``
    says the read is in flight. Redis being away ends it quietly (the read fails too); other
    errors propagate."""
    for _ in range(tries):
        if not still_waiting():
            return False
        try:
            if await send(client_id):
                return True
        except Exception as exc:
            if redis_unavailable(exc):
                return False
            raise
        await asyncio.sleep(pause_s)
    return False
