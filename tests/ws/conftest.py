"""Fixtures of the ws tests: the real web service and ws_service copies on top of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.ws.gateway_helpers import Stack, running_stack


@pytest.fixture
async def stack(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url, redis_url, key_prefix) as built:
        yield built
