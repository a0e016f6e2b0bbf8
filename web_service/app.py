"""The web service's ASGI app: :func:`create_app` wires settings, routes and resources.

Serve it with any ASGI server, e.g. ``uvicorn --factory`` over a function that calls
``create_app(WebSettings.from_env())``. The lifespan opens the SQL engine and the Redis
client and closes both on shutdown; nothing is opened before it runs.

Every request passes, in order: the request id, the metrics, the availability guard (Redis
or SQL away: 503 with ``Retry-After``, see :mod:`web_service.middleware.availability`),
authentication and the rate limit (``/v1/``, and the Globus Compute routes under ``/v2/``
and ``/v3/``), then its route. ``/dashboard`` signs its users in itself
(:mod:`web_service.dashboard`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute
from starlette.types import Scope

from sdk.keys import Keys
from service_common.redis_client import connect_redis
from service_common.stream_watch import StreamWatcher
from web_service.client_credentials import ClientCredentialExchange
from web_service.context import AppContext, context_of
from web_service.dashboard import routes as routes_dashboard
from web_service.errors import EXCEPTION_HANDLERS, RequestIdMiddleware
from web_service.middleware.auth import AuthMiddleware, TokenAuthenticator
from web_service.middleware.availability import AvailabilityMiddleware, Dependencies
from web_service.middleware.globus_auth import GlobusIntrospector
from web_service.middleware.metrics import Metrics, MetricsMiddleware
from web_service.middleware.ratelimit import RateLimiter
from web_service.result_queues import ResultQueues
from web_service.routes import agents as routes_agents
from web_service.routes import compute_v2 as routes_compute_v2
from web_service.routes import compute_v3 as routes_compute_v3
from web_service.routes import endpoints as routes_endpoints
from web_service.routes import functions as routes_functions
from web_service.routes import meta as routes_meta
from web_service.routes import oauth as routes_oauth
from web_service.routes import submit as routes_submit
from web_service.routes import tasks as routes_tasks
from web_service.settings import WebSettings
from web_service.store.database import create_engine
from web_service.store.endpoints import EndpointCatalog
from web_service.store.functions import FunctionCatalog
from web_service.store.task_groups import TaskGroupCatalog
from web_service.taskstore.cancel import Canceller

DISTRIBUTION = "fxbroker"


def create_app(settings: WebSettings) -> Starlette:
    """The web service for ``settings``; its SQL schema must be migrated to head."""
    service_version = version(DISTRIBUTION)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = create_engine(settings.database_url)
        redis = connect_redis(settings.redis_url)
        # One connection (one per hash slot on a cluster), whatever the number of long polls
        # waiting (stream_watch).
        watcher = StreamWatcher(redis)
        stopped = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stopped), name="fxbroker-web-watcher")
        dependencies = Dependencies(redis=redis, engine=engine)
        queues = (
            ResultQueues(settings.amqp_url, redis, Keys(settings.key_prefix))
            if settings.amqp_url
            else None
        )
        try:
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            globus = (
                GlobusIntrospector(
                    sessions,
                    client_id=settings.globus_client_id,
                    client_secret=settings.globus_client_secret,
                )
                if settings.globus_enabled
                else None
            )
            keys = Keys(settings.key_prefix)
            context = AppContext(
                settings=settings,
                engine=engine,
                redis=redis,
                keys=keys,
                functions=FunctionCatalog(
                    sessions,
                    cache_bytes=settings.function_cache_bytes,
                    cache_s=settings.catalog_cache_s,
                ),
                endpoints=EndpointCatalog(sessions, cache_s=settings.catalog_cache_s),
                task_groups=TaskGroupCatalog(sessions),
                canceller=Canceller(redis, keys, result_ttl_s=settings.result_ttl_s),
                watcher=watcher,
                auth=TokenAuthenticator(sessions, cache_s=settings.auth_cache_s, globus=globus),
                client_credentials=ClientCredentialExchange(sessions),
                limiter=RateLimiter(
                    rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst
                ),
                metrics=metrics,
                version=service_version,
                dependencies=dependencies,
                result_queues=queues,
            )
            yield {"context": context}
        finally:
            stopped.set()
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            if queues is not None:
                await queues.aclose()
            await dependencies.aclose()
            await redis.aclose()
            await engine.dispose()

    routes: list[BaseRoute] = [
        *routes_meta.routes,
        *routes_functions.routes,
        *routes_endpoints.routes,
        *routes_submit.routes,
        *routes_tasks.routes,
        *routes_agents.routes,
        *routes_compute_v2.routes,
        *routes_compute_v3.routes,
        *routes_oauth.routes,
        *routes_dashboard.routes,
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(MetricsMiddleware, metrics=metrics, routes=routes),
            Middleware(AvailabilityMiddleware, dependencies=_dependencies_of),
            Middleware(AuthMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


def _dependencies_of(scope: Scope) -> Dependencies:
    return context_of(HTTPConnection(scope)).dependencies
