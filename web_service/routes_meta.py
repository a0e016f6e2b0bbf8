"""Who am I, where is the push service, is this process healthy."""

from __future__ import annotations

import logging

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from web_service.auth import caller_of
from web_service.context import context_of

logger = logging.getLogger(__name__)


async def whoami(request: Request) -> JSONResponse:
    """``GET /v1/whoami``: ``{"user_id", "name"}`` of the token's owner."""
    caller = caller_of(request)
    return JSONResponse({"user_id": caller.user_id, "name": caller.name})


async def info(request: Request) -> JSONResponse:
    """``GET /v1/info``: ``{"ws_url", "version"}``; ``ws_url`` is empty when none is set."""
    context = context_of(request)
    return JSONResponse({"ws_url": context.settings.ws_url, "version": context.version})


async def healthz(request: Request) -> JSONResponse:
    """``GET /healthz`` (no token): 200 when Redis and SQL answer, else 503 saying which not."""
    context = context_of(request)
    failing: list[str] = []
    try:
        await context.redis.ping()
    except Exception:
        logger.exception("health check: Redis does not answer")
        failing.append("redis")
    try:
        async with context.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        logger.exception("health check: SQL does not answer")
        failing.append("database")
    if failing:
        return JSONResponse({"status": "unavailable", "failing": failing}, status_code=503)
    return JSONResponse({"status": "ok"})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/v1/whoami", whoami, methods=["GET"]),
    Route("/v1/info", info, methods=["GET"]),
]
