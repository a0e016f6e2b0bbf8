"""fxbroker SDK: register a Python function once, run it many times on your endpoints.

Three ways to get results: :class:`Client` submits and polls over HTTP,
:class:`AsyncClient` awaits results pushed over a WebSocket, and :class:`Executor` is a
``concurrent.futures.Executor`` that batches submissions. :meth:`Client.function` makes a
:class:`RemoteFunction` handle that calls a function where it runs.
"""

from sdk._base import Batch, TaskOutcome
from sdk.asyncio_client import AsyncClient
from sdk.client import Client
from sdk.config import ClientConfig, write_config
from sdk.errors import (
    APIError,
    ConfigurationError,
    ConnectionFailed,
    DeserializationError,
    FxBrokerError,
    SerializationError,
    TaskFailed,
    TaskPending,
)
from sdk.executor import Executor
from sdk.futures import TaskFuture
from sdk.handles import TaskHandle, as_completed
from sdk.progress import Progress
from sdk.remote import RemoteFunction
from sdk.results import Reconnect, ResultListener
from sdk.states import TaskState

__all__ = [
    "APIError",
    "AsyncClient",
    "Batch",
    "Client",
    "ClientConfig",
    "ConfigurationError",
    "ConnectionFailed",
    "DeserializationError",
    "Executor",
    "FxBrokerError",
    "Progress",
    "Reconnect",
    "RemoteFunction",
    "ResultListener",
    "SerializationError",
    "TaskFailed",
    "TaskFuture",
    "TaskHandle",
    "TaskOutcome",
    "TaskPending",
    "TaskState",
    "as_completed",
    "write_config",
]
