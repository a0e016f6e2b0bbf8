"""Who am I, where is the push service; health, readiness, metrics and the OpenAPI document.

``/healthz`` (the process answers), ``/readyz`` (SQL and Redis answer), ``/metrics``
(Prometheus text) and ``/v1/openapi.json`` need no token; keep ``/metrics`` and the probes
on the operators' network.
"""

from __future__ import annotations

import logging
import math

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web_service.context import context_of
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.middleware.availability import RETRY_AFTER_S
from web_service.middleware.metrics import MAX_SCRAPED_ENDPOINTS
from web_service.routes.openapi import build_openapi
from web_service.store.models import Endpoint
from web_service.taskstore.endpoint_state import endpoint_load

__all__ = ["routes"]

logger = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def whoami(request: Request) -> JSONResponse:
    """``GET /v1/whoami``: ``{"user_id", "name"}`` of the token's owner."""
    caller = caller_of(request)
    return JSONResponse({"user_id": caller.user_id, "name": caller.name})


async def info(request: Request) -> JSONResponse:
    """``GET /v1/info``: ``{"ws_url", "version"}``; ``ws_url`` is empty when none is set."""
    context = context_of(request)
    return JSONResponse({"ws_url": context.settings.ws_url, "version": context.version})


async def healthz(request: Request) -> JSONResponse:
    """``GET /healthz``: 200 while the process serves requests."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """``GET /readyz``: 200 when Redis and SQL answer, else 503 (with ``Retry-After``) saying
    which do not: ``{"status": "unavailable", "failing": ["redis", "database"]}``. Asks both
    at once, each bounded in time; an outage is logged once, not per probe."""
    failing = await context_of(request).dependencies.failing()
    if failing:
        return JSONResponse(
            {"status": "unavailable", "failing": failing},
            status_code=503,
            headers={"retry-after": str(math.ceil(RETRY_AFTER_S))},
        )
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text; the task gauges are computed now (bounded cost)."""
    context = context_of(request)
    async with context.engine.connect() as connection:
        endpoint_ids = list(
            await connection.scalars(
                select(Endpoint.id)
                .where(Endpoint.deleted_at.is_(None))
                .order_by(Endpoint.id)
                .limit(MAX_SCRAPED_ENDPOINTS)
            )
        )
    load = await endpoint_load(context.redis, context.keys, endpoint_ids)
    pipe = context.redis.pipeline(transaction=False)
    for endpoint_id in endpoint_ids:
        pipe.exists(context.keys.endpoint_status(endpoint_id))
    online = sum(await pipe.execute()) if endpoint_ids else 0
    context.metrics.set_task_states(
        waiting=sum(queued for queued, _ in load.values()),
        running=sum(delivered for _, delivered in load.values()),
        online=online,
    )
    return Response(context.metrics.render(), media_type=METRICS_CONTENT_TYPE)


async def openapi(request: Request) -> JSONResponse:
    """``GET /v1/openapi.json``: the OpenAPI 3.0 document of this service."""
    context = context_of(request)
    return JSONResponse(build_openapi(context.settings, version=context.version))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/openapi.json", openapi, methods=["GET"]),
    Route("/v1/whoami", whoami, methods=["GET"]),
    Route("/v1/info", info, methods=["GET"]),
]
