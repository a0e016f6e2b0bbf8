"""The one Redis client factory: the options every service relies on, and a real round trip."""

from __future__ import annotations

from service_common.redis_client import connect_redis


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
