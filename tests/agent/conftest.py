"""Fixtures of the agent tests: an endpoint queue under the test's own key prefix."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from tests.agent.helpers import Endpoint


@pytest.fixture
def endpoint(aredis: aioredis.Redis, keys: Keys) -> Endpoint:
    return Endpoint(aredis, keys)
