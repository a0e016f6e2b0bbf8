"""Private data stores the fault tests may stop, kill and restart: a ``redis-server`` with AOF
and a PostgreSQL cluster, each on a free loopback port in a temporary folder of its own.

Nothing here touches the Redis or PostgreSQL a developer or CI already runs: every process
is started here, known by its pid, and only those pids get signals.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.conftest import free_port, wait_for_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

Fsync = Literal["always", "everysec"]


class PrivateRedis:
    """A ``redis-server`` with ``appendonly yes`` in a temporary folder.

    :meth:`stop` (SIGTERM: Redis writes out its AOF and exits) or :meth:`kill` (SIGKILL:
    only what ``appendfsync`` already put on disk survives), then :meth:`start` again on the
    same port and folder, where Redis loads the AOF."""

    def __init__(self, *, appendfsync: Fsync = "everysec") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.appendfsync = appendfsync
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fxb-fault-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = (self.dir / "redis.log").open("ab")

    def start(self) -> None:
        """Start (or start again) on the same port and folder; return once it answers."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        self._proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--protected-mode", "no",
            ],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.port, START_TIMEOUT_S)
        self._wait_loaded()

    def _wait_loaded(self) -> None:
        """A Redis that listens may still be loading its AOF (it answers LOADING meanwhile)."""
        import redis

        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM and wait: Redis flushes its AOF before it exits."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: nothing is flushed."""
        self._signal(signal.SIGKILL)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _signal(self, signum: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signum)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(found):
        if (bindir / "initdb").exists():
            return bindir
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``initdb`` into a temporary folder, listening on
    127.0.0.1 and a free port (its socket in that folder too), ``fsync=off``.

    PostgreSQL refuses to run as root: when this process is root, its commands run as the
    ``postgres`` user, which owns the folder."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fxb-fault-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=START_TIMEOUT_S * 2)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-o", options,
            "-w", "-t", str(int(START_TIMEOUT_S)), *args,
        )  # fmt: skip

    def start(self) -> None:
        """Start and return once it accepts connections (``pg_ctl -w``)."""
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop with ``-m fast``: open sessions are ended, the cluster shuts down cleanly."""
        self._pg_ctl("stop", "-m", "fast")

    def alive(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.alive():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
