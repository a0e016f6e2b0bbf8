"""The processes a benchmark run starts, and the Redis it runs against.

:class:`RedisServer` is ``REDIS_URL`` when given, else a private ``redis-server`` on a free
loopback port for the life of the run. :class:`Processes` starts subprocesses with their
output in one log file and stops every one of them (SIGTERM, then SIGKILL after a grace)
when its ``with`` block ends. :func:`delete_matching` removes the keys of one run and
nothing else: every key a workload makes carries the run's tag in its name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import redis

from fxbroker.embedded import EmbeddedRedis

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where ``bench`` and the fxbroker packages import from; subprocesses run here."""


def python_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the repository on ``PYTHONPATH``,
    so worker processes import :mod:`bench.tasks` by name."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def wait_for_port(port: int, *, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Block until something accepts on ``127.0.0.1:port``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on port {port}") from None
            time.sleep(0.05)


class Processes:
    """Subprocesses of one run; ``with`` stops them all, last started first."""

    def __init__(self, log_path: Path, *, stop_grace_s: float = 15.0) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._procs: list[subprocess.Popen[bytes]] = []
        self._grace_s = stop_grace_s

    def start(
        self, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in the repository root, with :func:`python_env` of ``env``."""
        proc = subprocess.Popen(
            list(args), env=python_env(env), cwd=REPO_ROOT, stdout=self._log, stderr=self._log,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, wait, SIGKILL if it does not go."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self._grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    @property
    def running(self) -> list[subprocess.Popen[bytes]]:
        """The processes started and not yet stopped, in start order."""
        return list(self._procs)

    def check(self) -> None:
        """Raise if any process stopped on its own."""
        for proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with {proc.returncode}; see {self.log_path}"
                )

    def close(self) -> None:
        procs, self._procs = list(self._procs), []
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(self._grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer:
    """``url`` when given; else a private ``redis-server`` on loopback inside the block."""

    def __init__(self, url: str | None) -> None:
        self._given = url
        self.url = url or ""
        self.kind = "REDIS_URL" if url else "private redis-server"
        self._embedded: EmbeddedRedis | None = None
        self._dir: str | None = None

    def __enter__(self) -> RedisServer:
        if self._given:
            return self
        if shutil.which("redis-server") is None:
            raise RuntimeError("set REDIS_URL, or install redis-server for a private one")
        self._dir = tempfile.mkdtemp(prefix="fxbroker-bench-redis-")
        self._embedded = EmbeddedRedis(Path(self._dir), append_only=False).start()
        self.url = self._embedded.url
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._embedded is not None:
            self._embedded.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def version(self) -> str:
        client = redis.Redis.from_url(self.url)
        try:
            info = client.info("server")
            return str(info.get("redis_version", "?"))
        finally:
            client.close()


def used_memory(url: str) -> int:
    """``used_memory`` of ``INFO memory``, in bytes."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def delete_matching(url: str, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, then DEL in chunks); how many went."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


def count_matching(url: str, pattern: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=pattern, count=5000))
    finally:
        client.close()
