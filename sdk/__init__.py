"""fxbroker SDK: register a Python function once, run it many times on your endpoints.

Three ways to get results: :class:`Client` submits and polls over HTTP,
:class:`AsyncClient` awaits results pushed over a WebSocket, and :class:`Executor` is a
``concurrent.futures.Executor`` that batches submissions.
"""

from sdk._base import Batch
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
    "Reconnect",
    "ResultListener",
    "SerializationError",
    "TaskFailed",
    "TaskPending",
    "TaskState",
    "write_config",
]
