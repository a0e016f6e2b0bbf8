"""Redis or SQL away: every request that needs it answers 503, and each outage is one log line.

:class:`AvailabilityMiddleware` wraps authentication and the routes. An exception that means
Redis (:func:`~service_common.redis_client.redis_unavailable`) or SQL
(:func:`~web_service.store.database.sql_unavailable`) cannot be reached becomes::

    503  Retry-After: 1
    {"code": "SERVICE_UNAVAILABLE", "message": "Redis is unavailable; retry", "request_id": "..."}

never a 500 with a traceback. Requests that do not need the missing dependency carry on
(a submit whose function, endpoint and token are cached needs no SQL). The SDK retries 503s
with backoff, and submits with the same Idempotency-Key.

:class:`Dependencies` holds one :class:`~service_common.retry.Outage` per dependency: the
first failure logs one line; from then on a probe (``PING`` / ``SELECT 1``, with the shared
backoff) runs in the background until the dependency answers again and logs how long it
was away. Requests never log per failure. ``/readyz`` asks both at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_common.redis_client import RedisClient, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage
from web_service.errors import error_response, request_id_of, retry_later
from web_service.store.database import sql_unavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0
"""What ``Retry-After`` tells a client to wait before retrying a 503."""
PROBE_TIMEOUT_S = 2.0
"""How long one readiness or recovery probe may take before it counts as a failure."""
REDIS, SQL = "redis", "database"
"""The names ``/readyz`` gives the dependencies."""


def redis_error(exc: BaseException) -> bool:
    """True for a Redis client error meaning Redis is away. (A bare ``OSError`` is SQL's
    driver failing to connect: redis-py wraps its own socket errors in a RedisError, or in a
    RedisClusterException when a cluster client reaches no node.)"""
    return isinstance(exc, RedisError | RedisClusterException) and redis_unavailable(exc)


class Dependencies:
    """The outages of this process's Redis and SQL, and probes of both."""

    def __init__(self, *, redis: RedisClient, engine: AsyncEngine) -> None:
        self._redis = redis
        self._engine = engine
        self.outages = {
            REDIS: Outage("Redis", logger=logger),
            SQL: Outage("SQL", logger=logger),
        }
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def classify(self, exc: BaseException) -> str | None:
        """Which dependency ``exc`` says is away (``None``: neither; a real fault)."""
        if redis_error(exc):
            return REDIS
        if sql_unavailable(exc):
            return SQL
        return None

    def failed(self, name: str, exc: BaseException) -> None:
        """Note that ``name`` failed; the first failure of an outage logs and starts the
        probe that notices its end."""
        if not self.outages[name].failed(exc):
            return
        watcher = self._watchers.get(name)
        if watcher is None or watcher.done():
            self._watchers[name] = asyncio.create_task(
                self._watch(name), name=f"fxbroker-probe-{name}"
            )

    async def probe(self, name: str) -> None:
        """One probe of ``name``; raises what it raised."""
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            if name == REDIS:
                await self._redis.ping()
            else:
                async with self._engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))

    async def failing(self) -> list[str]:
        """The dependencies that do not answer now (both asked at once)."""
        names = [REDIS, SQL]
        results = await asyncio.gather(*(self.probe(n) for n in names), return_exceptions=True)
        down: list[str] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self.failed(name, result)
                down.append(name)
            else:
                self.outages[name].recovered()
        return down

    async def _watch(self, name: str) -> None:
        outage = self.outages[name]
        failures = 0
        while outage.down:
            failures += 1
            await asyncio.sleep(DEFAULT_BACKOFF.delay_s(failures))
            with contextlib.suppress(Exception):
                await self.probe(name)
                outage.recovered()

    async def aclose(self) -> None:
        for watcher in self._watchers.values():
            watcher.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        self._watchers.clear()


class AvailabilityMiddleware:
    """Answers 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After`` when Redis or SQL is away."""

    def __init__(self, app: ASGIApp, *, dependencies: Callable[[Scope], Dependencies]) -> None:
        self.app = app
        self._dependencies = dependencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            dependencies = self._dependencies(scope)
            name = dependencies.classify(exc)
            if name is None or started:
                raise
            dependencies.failed(name, exc)
            what = dependencies.outages[name].what
            answer = retry_later(
                503, "SERVICE_UNAVAILABLE", f"{what} is unavailable; retry", RETRY_AFTER_S
            )
            await error_response(answer, request_id_of(scope))(scope, receive, send)
