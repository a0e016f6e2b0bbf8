"""A private ``redis-server`` that a test may stop, kill and start again on the same port.

Tests that inject Redis faults never touch the shared Redis of ``REDIS_URL``: they start one
of these on a free loopback port, with its append-only file in a directory of their own::

    with PrivateRedis(tmp_path / "redis") as server:     # appendonly yes, appendfsync always
        ... server.url ...
        server.restart(down_s=1.5)                        # SIGTERM, wait, start again
        server.kill()                                     # SIGKILL: no shutdown, no final fsync
        server.start()                                    # same port, same directory

Stopping with SIGTERM lets Redis flush and fsync its AOF (nothing acknowledged is lost with
any ``appendfsync``); SIGKILL loses what the AOF had not fsynced (nothing with ``always``,
up to about a second with ``everysec``). :func:`redis_server_binary` is ``None`` where no
``redis-server`` is installed: such tests skip.

The methods block (``restart`` sleeps through the outage): from a test's event loop call them
with ``await asyncio.to_thread(server.restart, down_s=1.5)``, so the clients under test live
through the outage instead of being frozen during it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from fxbroker.embedded import free_port, wait_for_port

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """The ``redis-server`` on ``PATH``, or ``None``."""
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The ``redis-server`` binary; skips the calling test where there is none."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed")
    return binary


def reap(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc`` (when it still runs) and wait for it; SIGKILL after
    :data:`STOP_TIMEOUT_S`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PrivateRedis:
    """One ``redis-server`` on ``port`` (a free one by default) keeping its files in
    ``data_dir``; ``appendfsync`` is ``always``, ``everysec`` or ``no``."""

    def __init__(self, data_dir: Path, *, port: int = 0, appendfsync: str = "always") -> None:
        self.data_dir = data_dir
        self.port = port or free_port(HOST)
        self.appendfsync = appendfsync
        self.starts = 0
        """How many times the server was started."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, *, timeout_s: float = 15.0) -> PrivateRedis:
        """Start the server (again) and wait until it accepts connections.

        Redis accepts connections while it is still loading its AOF and answers ``LOADING``
        meanwhile; clients treat that as part of the outage."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        binary = require_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--dir", str(self.data_dir),
                "--logfile", str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.starts += 1
        try:
            wait_for_port(HOST, self.port, timeout_s=timeout_s)
        except TimeoutError:
            self._reap(signal.SIGKILL)
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, as an orderly restart does: Redis fsyncs its AOF and exits."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill does: nothing more is written."""
        self._reap(signal.SIGKILL)

    def restart(self, *, down_s: float = 0.0, kill: bool = False) -> None:
        """Stop (``kill``: SIGKILL), stay down ``down_s`` seconds, start again on the same
        port and directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        if down_s > 0:
            time.sleep(down_s)  # the outage itself: how long Redis stays away
        self.start()

    def _reap(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        reap(proc, sig)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
