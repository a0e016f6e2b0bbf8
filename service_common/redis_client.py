"""The one way a service opens Redis, and what counts as Redis being away.

Every service opens its client with :func:`connect_redis` and waits out the errors
:func:`redis_unavailable` accepts with the shared retry policy (:mod:`service_common.retry`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.typing import EncodableT

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


def connect_redis(
    url: str, *, client_name: str | None = None, max_connections: int = MAX_CONNECTIONS
) -> aioredis.Redis:
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
    """
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


def redis_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis is away (down, restarting, loading its data, failing
    over) rather than that a command was wrong: an outage to wait out."""
    return isinstance(exc, TRANSIENT_REDIS_ERRORS)


UNBLOCK_TRIES = 50
"""A wake that finds the blocked read not yet blocked on the server tries again this often."""
UNBLOCK_PAUSE_S = 0.002


async def unblock(
    redis: aioredis.Redis,
    client_id: int,
    still_waiting: Callable[[], bool],
    *,
    tries: int = UNBLOCK_TRIES,
    pause_s: float = UNBLOCK_PAUSE_S,
) -> bool:
    """Wake the connection ``client_id`` out of its blocking read (``CLIENT UNBLOCK``, sent
    on ``redis``, another connection); True once it woke.

    The blocking command may be sent but not yet blocked on the server; the wake is then
    tried again after ``pause_s``, at most ``tries`` times, and only while ``still_waiting()``
    says the read is in flight. Redis being away ends it quietly (the read fails too); other
    errors propagate."""
    for _ in range(tries):
        if not still_waiting():
            return False
        try:
            if await redis.client_unblock(client_id):
                return True
        except Exception as exc:
            if redis_unavailable(exc):
                return False
            raise
        await asyncio.sleep(pause_s)
    return False
