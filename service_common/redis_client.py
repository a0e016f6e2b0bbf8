"""The one way a service opens Redis, so every service talks to it with the same options."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect_redis(url: str) -> aioredis.Redis:
    """An asyncio Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    Replies are decoded to ``str``. There is no per-reply socket timeout (redis-py's default
    before 6): it wraps every reply of a pipeline in an asyncio timeout, a quarter of the
    submit path's time in the profile; TCP keepalive finds a dead peer instead. redis-py
    parses replies with hiredis when it is installed. Nothing connects until the first
    command; the caller closes the client with ``await client.aclose()``.
    """
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=None, socket_keepalive=True
    )
