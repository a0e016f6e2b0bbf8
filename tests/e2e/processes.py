"""Pieces every end-to-end platform of processes needs: the ``fxbroker`` command, a database
of the platform's own, the endpoint id an agent stored, and stopping the processes (their
Redis keys go with :func:`tests.redis_urls.delete_keys`). :mod:`tests.e2e.conftest` (one copy
of each service) and :mod:`tests.e2e.test_many_copies` (two of each) start their platforms
with them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

from tests.conftest import postgres_database

FXBROKER = [sys.executable, "-m", "fxbroker.cli"]
ENDPOINT_NAME = "e2e-endpoint"
REGISTER_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def platform_database(tmp: Path) -> Generator[str, None, None]:
    """A fresh database on ``DATABASE_URL``'s server (dropped when the generator closes), or a
    SQLite file in ``tmp`` without one."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield from postgres_database(url)
    else:
        yield f"sqlite+aiosqlite:///{tmp / 'fxbroker.db'}"


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running (the last started first), wait, SIGKILL the rest."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_endpoint_id(
    home: Path, agent: subprocess.Popen[bytes], name: str = ENDPOINT_NAME
) -> str:
    """The id ``fxbroker endpoint start`` stored once it registered the endpoint."""
    path = home / "endpoints" / name / "endpoint_id"
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while not (path.exists() and path.read_text().strip()):
        assert agent.poll() is None, "fxbroker endpoint start exited"
        assert time.monotonic() < deadline, "the endpoint was not registered in time"
        time.sleep(0.05)
    return path.read_text().strip()
