"""fxbroker: register a Python function once, run it many times on your own endpoints.

::

    from fxbroker import Client, AsyncClient, Executor, TaskPending, TaskFailed

The public names are the SDK's (implemented in the ``sdk`` package), re-exported lazily
(PEP 562): ``import fxbroker`` loads neither the services nor the ``fxbroker`` command, and
each name loads its module on first use. The command lives in :mod:`fxbroker.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sdk

if TYPE_CHECKING:
    from sdk import (
        APIError,
        AsyncClient,
        Batch,
        CertificateNotTrusted,
        Client,
        CommandFailed,
        CommandTimedOut,
        ConfigurationError,
        ConnectionFailed,
        DeserializationError,
        Executor,
        FxBrokerError,
        RemoteFunction,
        SerializationError,
        ShellFunction,
        ShellResult,
        TaskFailed,
        TaskFuture,
        TaskHandle,
        TaskPending,
        TaskState,
        as_completed,
    )

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
    if name not in sdk.EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(sdk, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
