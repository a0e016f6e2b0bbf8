"""Fixtures of the command tests: a private ``$FXBROKER_HOME`` and real ``fxbroker web`` and
``fxbroker ws`` processes on a migrated database with one user."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.services import FXBROKER, WebProcess
from tests.conftest import free_port, wait_for_port


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FXBROKER_HOME", str(home))
    return home


@pytest.fixture
def web_process(
    home: Path, redis_url: str, key_prefix: str, database_url: str
) -> Iterator[WebProcess]:
    """``fxbroker web`` and ``fxbroker ws`` (the agents' gateway) in processes of their own,
    on a migrated database with one user; the web service announces the ws service."""
    port, ws_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "FXBROKER_KEY_PREFIX": key_prefix, "FXBROKER_HOME": str(home),
           "FXBROKER_WS_URL": f"ws://127.0.0.1:{ws_port}",
           "FXBROKER_WEB_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    subprocess.run([*FXBROKER, "db", "upgrade"], env=env, check=True, capture_output=True)
    token = subprocess.run([*FXBROKER, "user", "create", "lab-user"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    services: list[subprocess.Popen[bytes]] = []
    with (home / "services.log").open("wb") as log:
        for command in (["web", "--port", str(port)], ["ws", "--port", str(ws_port)]):
            services.append(subprocess.Popen([*FXBROKER, *command], env=env, stdout=log,
                                             stderr=log))  # fmt: skip
    try:
        wait_for_port(port, 30)
        wait_for_port(ws_port, 30)
        yield WebProcess(f"http://127.0.0.1:{port}", token, env)
    finally:
        for service in services:
            service.terminate()
        for service in services:
            service.wait(30)
