"""What every request handler shares: settings, SQL, Redis, catalogs, limits and metrics.

One :class:`AppContext` is built by the app's lifespan (which also closes it) and reaches
handlers as ``request.state.context``; :func:`context_of` fetches it, typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from sdk.keys import Keys
from service_common.redis_client import RedisClient
from service_common.stream_watch import StreamWatcher
from web_service.middleware.metrics import Metrics
from web_service.middleware.ratelimit import RateLimiter
from web_service.settings import WebSettings
from web_service.store.endpoints import EndpointCatalog
from web_service.store.functions import FunctionCatalog
from web_service.store.task_groups import TaskGroupCatalog
from web_service.taskstore.cancel import Canceller

if TYPE_CHECKING:
    from web_service.client_credentials import ClientCredentialExchange
    from web_service.middleware.auth import TokenAuthenticator
    from web_service.middleware.availability import Dependencies
    from web_service.result_queues import ResultQueues


@dataclass(frozen=True, kw_only=True)
class AppContext:
    settings: WebSettings
    engine: AsyncEngine
    redis: RedisClient
    keys: Keys
    functions: FunctionCatalog
    endpoints: EndpointCatalog
    task_groups: TaskGroupCatalog
    canceller: Canceller
    watcher: StreamWatcher
    """The process's one blocked reader of results streams, for long polls."""
    auth: TokenAuthenticator
    client_credentials: ClientCredentialExchange
    limiter: RateLimiter
    metrics: Metrics
    version: str
    dependencies: Dependencies
    result_queues: ResultQueues | None = None
    """Declares Executor result queues; None without ``FXBROKER_AMQP_URL``."""


def context_of(connection: HTTPConnection) -> AppContext:
    context = connection.state.context
    if not isinstance(context, AppContext):
        raise RuntimeError("the web service context is missing; was the lifespan run?")
    return context
