"""The public names: ``from fxbroker import ...`` and ``sdk`` export exactly these, each
resolves, and importing them loads neither the services nor the ``fxbroker`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType

import pytest

import fxbroker
import sdk

PUBLIC = [
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

SERVERS = [
    "web_service", "ws_service", "endpoint_agent", "amqp_publisher", "aio_pika", "starlette",
    "uvicorn", "sqlalchemy",
]  # fmt: skip
CLI = ["fxbroker.cli", "fxbroker.stack", "fxbroker.endpoints", "fxbroker.embedded"]
CLIENT_LIBRARIES = ["httpx", "urllib3", "aiohttp", "websockets"]


@pytest.mark.parametrize("package", [fxbroker, sdk], ids=["fxbroker", "sdk"])
def test_the_public_names_are_pinned(package: ModuleType) -> None:
    assert package.__all__ == PUBLIC
    assert set(PUBLIC) <= set(dir(package))


@pytest.mark.parametrize("name", PUBLIC)
def test_each_name_resolves_to_the_sdks_own_object(name: str) -> None:
    value = getattr(fxbroker, name)
    assert value is getattr(sdk, name)
    assert value.__module__.startswith("sdk.")


def test_plumbing_is_not_exported() -> None:
    for name in ("ResultListener", "Progress", "write_config", "Reconnect", "TaskOutcome"):
        with pytest.raises(AttributeError):
            getattr(fxbroker, name)
        with pytest.raises(AttributeError):
            getattr(sdk, name)


def _loaded(statement: str) -> set[str]:
    """The top-level and ``fxbroker.*`` modules loaded by ``statement`` in a fresh process."""
    script = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "statement", ["import fxbroker", "from fxbroker import Client", "from fxbroker import *"]
)
def test_importing_fxbroker_loads_no_server_nor_the_command(statement: str) -> None:
    loaded = _loaded(statement)
    assert loaded.isdisjoint(SERVERS + CLI), sorted(loaded & set(SERVERS + CLI))
    if statement != "import fxbroker":
        assert "sdk.client" in loaded


def test_a_worker_importing_sdk_keys_loads_no_client_library() -> None:
    loaded = _loaded("import sdk.keys")
    unwanted = set(SERVERS + CLI + CLIENT_LIBRARIES + ["fxbroker", "sdk.client"])
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


def test_a_spawned_worker_loads_neither_redis_nor_the_agent_loop() -> None:
    loaded = _loaded("import endpoint_agent.processes")
    unwanted = {"redis", "endpoint_agent.agent", "service_common.tasks.stream", *CLIENT_LIBRARIES}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)
