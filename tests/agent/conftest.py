"""Fixtures of the agent tests: the real platform (web service, one ws_service copy with its
gateway, Redis under the test's own key prefix) and an endpoint registered with it, whose
agents reach it through the gateway only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.agent.gateway_stack import GatewayEndpoint, GatewayStack, gateway_stack, ws_url


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, key_prefix: str, aredis: aioredis.Redis
) -> AsyncIterator[GatewayStack]:
    async with gateway_stack(database_url, redis_url, key_prefix, aredis) as built:
        yield built


@pytest.fixture
async def endpoint(stack: GatewayStack) -> AsyncIterator[GatewayEndpoint]:
    """An endpoint and the ws_service copy its agents reach (``endpoint.gateway_url``)."""
    registered = await stack.endpoint()
    async with stack.ws() as server:
        registered.gateway_url = ws_url(server)
        yield registered
