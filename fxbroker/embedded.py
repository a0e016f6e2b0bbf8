"""The embedded Redis of ``fxbroker dev``: a local ``redis-server`` binary when there is one,
else fakeredis's TCP server in a thread, so the platform runs with nothing installed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def listening_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A TCP socket bound to ``host:port`` (port 0: a free one) and listening, closed on exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, as getaddrinfo names it for asyncio's own servers: asyncio turns
    # Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and accepted sockets
    # inherit the listener's (with proto 0 the demo ran a tenth slower).
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        yield sock


def wait_for_port(host: str, port: int, *, timeout_s: float = 15.0) -> None:
    """Block until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on {host}:{port}") from None
            time.sleep(0.05)


@dataclass
class EmbeddedRedis:
    """A private Redis on loopback for the life of a ``with`` block.

    ``data_dir`` holds its append-only file, so a ``fxbroker dev`` restart keeps queued
    tasks and results (the fakeredis fallback keeps nothing). ``use_binary=False`` forces
    the fakeredis server; ``append_only=False`` keeps nothing on disk."""

    data_dir: Path
    port: int = 0
    use_binary: bool = True
    append_only: bool = True
    host: str = "127.0.0.1"
    kind: str = field(default="", init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _server: object | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if not self.port:
            self.port = free_port(self.host)
        binary = shutil.which("redis-server") if self.use_binary else None
        if binary:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [
                    binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                    "--appendonly", "yes" if self.append_only else "no",
                    "--dir", str(self.data_dir),
                    "--logfile", str(self.data_dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.kind = "redis-server"
        else:
            from fakeredis import TcpFakeServer

            server = TcpFakeServer((self.host, self.port), server_type="redis")
            server.daemon_threads = True
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, name="fxbroker-fakeredis", daemon=True
            )
            self._thread.start()
            self.kind = "fakeredis"
        wait_for_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._server is not None:
            from fakeredis import TcpFakeServer

            assert isinstance(self._server, TcpFakeServer)
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
