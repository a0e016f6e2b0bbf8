"""The web service's ASGI app: :func:`create_app` wires settings, routes and resources.

Serve it with any ASGI server, e.g. ``uvicorn --factory`` over a function that calls
``create_app(WebSettings.from_env())``. The lifespan opens the SQL engine and the Redis
client and closes both on shutdown; nothing is opened before it runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware

from sdk.keys import Keys
from web_service import routes_endpoints, routes_functions, routes_meta, routes_tasks
from web_service.auth import AuthMiddleware, TokenAuthenticator
from web_service.catalog import Catalog
from web_service.context import AppContext
from web_service.database import create_engine
from web_service.errors import EXCEPTION_HANDLERS, RequestIdMiddleware
from web_service.settings import WebSettings

DISTRIBUTION = "fxbroker"


def create_app(settings: WebSettings) -> Starlette:
    """The web service for ``settings``; its SQL schema must be migrated to head."""
    service_version = version(DISTRIBUTION)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = create_engine(settings.database_url)
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            context = AppContext(
                settings=settings,
                engine=engine,
                redis=redis,
                keys=Keys(settings.key_prefix),
                catalog=Catalog(sessions, function_cache_bytes=settings.function_cache_bytes),
                auth=TokenAuthenticator(sessions, cache_s=settings.auth_cache_s),
                version=service_version,
            )
            yield {"context": context}
        finally:
            await redis.aclose()
            await engine.dispose()

    return Starlette(
        routes=[
            *routes_meta.routes,
            *routes_functions.routes,
            *routes_endpoints.routes,
            *routes_tasks.routes,
        ],
        middleware=[Middleware(RequestIdMiddleware), Middleware(AuthMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
