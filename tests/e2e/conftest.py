"""The platform as real processes: ``fxbroker web``, ``fxbroker ws`` and ``fxbroker endpoint
start`` on loopback, against the session's Redis and a database of the module's own.

The endpoint is started with no Redis URL at all (its environment has no ``REDIS_URL``): it
registers with the web service, stores the credential it is issued, and reaches its tasks
through the gateway of ``fxbroker ws``. A :class:`~tests.e2e.sockets.SocketWatch` samples
the TCP peers of the agent process and its workers for the module's whole run.

:func:`running_platform` starts the same platform behind TLS when given certificates: the
services serve ``https://`` and ``wss://``, the web service announces the ``wss://`` URL
(the agent is told no ws URL and asks for it), ws_service trusts the web service through
``SSL_CERT_FILE``, and the agent trusts both through ``FXBROKER_CA_FILE``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fxbroker.endpoints import configure
from tests.conftest import free_port, wait_for_port
from tests.e2e.processes import (
    ENDPOINT_NAME,
    FXBROKER,
    platform_database,
    stop_processes,
    wait_for_endpoint_id,
)
from tests.e2e.sockets import SocketWatch
from tests.redis_urls import delete_keys, redis_ports
from tests.tls_certificates import Certificates


@dataclass(frozen=True)
class Platform:
    url: str
    ws_url: str
    token: str
    endpoint_id: str
    env: dict[str, str]
    redis_ports: tuple[int, ...]
    """Every port of the platform's Redis (each node of a cluster)."""
    ws_port: int
    agent: SocketWatch
    """The TCP peers of the agent process and its workers, sampled from its start."""


@pytest.fixture(scope="module")
def platform(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(redis_url, tmp_path_factory.mktemp("platform")) as started:
        yield started


_TRUST_VARIABLES = {"SSL_CERT_FILE", "SSL_CERT_DIR", "FXBROKER_CA_FILE"}


@contextlib.contextmanager
def running_platform(
    redis_url: str,
    tmp: Path,
    *,
    tls: Certificates | None = None,
    extra_env: Mapping[str, str] | None = None,
    endpoint_config: Mapping[str, Any] | None = None,
) -> Iterator[Platform]:
    """The platform as processes (see the module docstring), stopped on leaving;
    ``extra_env`` is added to every process's environment, ``endpoint_config`` written into
    the endpoint's ``config.toml`` (as ``fxbroker endpoint configure`` does) before its agent
    starts (a variable of the environment wins over the file)."""
    prefix = f"fxe-{uuid.uuid4().hex[:10]}"
    web_port, ws_port = free_port(), free_port()
    secure = "s" if tls is not None else ""
    url, ws_url = f"http{secure}://127.0.0.1:{web_port}", f"ws{secure}://127.0.0.1:{ws_port}"
    procs: list[subprocess.Popen[bytes]] = []
    stop_watch: list[SocketWatch] = []
    db_gen = platform_database(tmp)
    database_url = next(db_gen)
    log = (tmp / "platform.log").open("wb")
    env = {
        **{k: v for k, v in os.environ.items() if k not in _TRUST_VARIABLES},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FXBROKER_KEY_PREFIX": prefix,
        "FXBROKER_WS_URL": ws_url,
        "FXBROKER_WEB_URL": url,
        "FXBROKER_HOME": str(tmp / "home"),
        "FXBROKER_WORKERS": "2",
        **(extra_env or {}),
    }
    try:
        subprocess.run([*FXBROKER, "db", "upgrade"], env=env, check=True, capture_output=True)
        token = subprocess.run(
            [*FXBROKER, "user", "create", "e2e"], env=env, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip
        env = {**env, "FXBROKER_URL": url, "FXBROKER_TOKEN": token}
        service_env, agent_env = env, {k: v for k, v in env.items() if k != "REDIS_URL"}
        if tls is not None:
            service_env = {
                **env,
                "FXBROKER_TLS_CERT": str(tls.cert_file),
                "FXBROKER_TLS_KEY": str(tls.key_file),
                "SSL_CERT_FILE": str(tls.ca_file),  # ws_service checks tokens at the web
            }
            agent_env = {k: v for k, v in agent_env.items() if k != "FXBROKER_WS_URL"}
            agent_env["FXBROKER_CA_FILE"] = str(tls.ca_file)
        for cmd in (["web", "--port", str(web_port)], ["ws", "--port", str(ws_port)]):
            procs.append(
                subprocess.Popen([*FXBROKER, *cmd], env=service_env, stdout=log, stderr=log)
            )
        wait_for_port(web_port, 30)
        wait_for_port(ws_port, 30)
        if endpoint_config:
            configure(tmp / "home", ENDPOINT_NAME, endpoint_config)
        agent = subprocess.Popen(
            [*FXBROKER, "endpoint", "start", ENDPOINT_NAME],
            env=agent_env, stdout=log, stderr=log,
        )  # fmt: skip
        procs.append(agent)
        watch = SocketWatch(agent.pid).start()
        stop_watch.append(watch)
        endpoint_id = wait_for_endpoint_id(tmp / "home", agent)
        yield Platform(url, ws_url, token, endpoint_id, env, redis_ports(redis_url), ws_port, watch)
    finally:
        for watch in stop_watch:
            watch.stop()
        stop_processes(procs)
        log.close()
        db_gen.close()
        delete_keys(redis_url, prefix)
