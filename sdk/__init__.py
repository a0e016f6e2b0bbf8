"""The implementation of fxbroker's SDK; users import it as ``fxbroker`` (``from fxbroker
import Client``).

Three ways to get results: :class:`Client` submits and polls over HTTP,
:class:`AsyncClient` awaits results pushed over a WebSocket, and :class:`Executor` is a
``concurrent.futures.Executor`` that batches submissions. :class:`RemoteFunction` calls a
function where it runs; :class:`ShellFunction` runs a shell command there (:mod:`.shell`).

The names below are loaded lazily (PEP 562): ``import sdk.keys``, which every agent worker
process does, loads none of urllib3, aiohttp and websockets, and ``sdk.Client`` imports the
client only when it is first used. What is not in :data:`__all__` is plumbing, importable
from its own module (``sdk.results.ResultListener``, ``sdk.progress.Progress``,
``sdk.config.write_config``).

Modules: :mod:`.client` and :mod:`.asyncio_client` (the twin clients) share the sans-I/O
core :mod:`._base`; :mod:`.executor` builds on the clients and :mod:`.remote` on the
executor. :mod:`.batching` (the submit queue), :mod:`.results` (pushed results),
:mod:`.handles` and :mod:`.futures` (what a submit returns), :mod:`.progress`, :mod:`.config`
(finding the service), :mod:`.tls` (which certificates are trusted), :mod:`.errors` (the
exception tree) serve them; :mod:`.wire`,
:mod:`.messages`, :mod:`.serialize`, :mod:`.states` and :mod:`.keys` are the wire formats the
services share.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk._base import Batch
    from sdk.asyncio_client import AsyncClient
    from sdk.client import Client
    from sdk.errors import (
        APIError,
        CertificateNotTrusted,
        CommandFailed,
        CommandTimedOut,
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
    from sdk.remote import RemoteFunction
    from sdk.shell import ShellFunction, ShellResult
    from sdk.states import TaskState

EXPORTS: dict[str, str] = {
    "APIError": "sdk.errors",
    "AsyncClient": "sdk.asyncio_client",
    "Batch": "sdk._base",
    "CertificateNotTrusted": "sdk.errors",
    "Client": "sdk.client",
    "CommandFailed": "sdk.errors",
    "CommandTimedOut": "sdk.errors",
    "ConfigurationError": "sdk.errors",
    "ConnectionFailed": "sdk.errors",
    "DeserializationError": "sdk.errors",
    "Executor": "sdk.executor",
    "FxBrokerError": "sdk.errors",
    "RemoteFunction": "sdk.remote",
    "SerializationError": "sdk.errors",
    "ShellFunction": "sdk.shell",
    "ShellResult": "sdk.shell",
    "TaskFailed": "sdk.errors",
    "TaskFuture": "sdk.futures",
    "TaskHandle": "sdk.handles",
    "TaskPending": "sdk.errors",
    "TaskState": "sdk.states",
    "as_completed": "sdk.handles",
}
"""Each public name and the module that defines it."""

__all__ = [
    "APIError",
    "AsyncClient",
    "Batch",
    "CertificateNotTrusted",
    "Client",
    "CommandFailed",
    "CommandTimedOut",
    "ConfigurationError",
    "ConnectionFailed",
    "DeserializationError",
    "Executor",
    "FxBrokerError",
    "RemoteFunction",
    "SerializationError",
    "ShellFunction",
    "ShellResult",
    "TaskFailed",
    "TaskFuture",
    "TaskHandle",
    "TaskPending",
    "TaskState",
    "as_completed",
]


def __getattr__(name: str) -> Any:
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
