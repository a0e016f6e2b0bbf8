"""The processes a benchmark run starts, and the Redis it runs against.

:class:`RedisServer` is ``REDIS_URL`` when given, else a private ``redis-server`` on a free
loopback port for the life of the run, or a private Redis Cluster of three masters
(``--redis-cluster``). :class:`Processes` starts subprocesses with their output in one log
file and stops every one of them (SIGTERM, then SIGKILL after a grace) when its ``with`` block
ends. The keys of one run are removed with :func:`bench.redis_admin.delete_matching`, and
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

from bench.redis_admin import server_version, topology
from fxbroker.embedded import EmbeddedRedis

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where ``bench`` and the fxbroker packages import from; subprocesses run here."""
CLUSTER_SCRIPT = REPO_ROOT / ".ci" / "redis-cluster"
"""Starts a throwaway Redis Cluster on loopback (``start DIR [MASTERS]``) and stops it."""
CLUSTER_MASTERS = 3


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
    """``url`` when given; else, inside the block, a private ``redis-server`` on loopback, or
    with ``cluster`` a private Redis Cluster of :data:`CLUSTER_MASTERS` masters (cluster mode,
    no persistence, on free loopback ports, in a temporary folder of its own), started and
    stopped with ``.ci/redis-cluster``."""

    def __init__(self, url: str | None, *, cluster: bool = False) -> None:
        self._given = None if cluster else url
        self._cluster = cluster
        self.url = self._given or ""
        if cluster:
            self.kind = "private cluster"
        else:
            self.kind = "REDIS_URL" if url else "private redis-server"
        self._embedded: EmbeddedRedis | None = None
        self._dir: str | None = None

    def __enter__(self) -> RedisServer:
        if self._given:
            return self
        if shutil.which("redis-server") is None:
            raise RuntimeError("set REDIS_URL, or install redis-server for a private one")
        self._dir = tempfile.mkdtemp(prefix="fxbroker-bench-redis-")
        if self._cluster:
            self.url = _cluster_script("start", self._dir, str(CLUSTER_MASTERS))
        else:
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
            if self._cluster:
                _cluster_script("stop", self._dir)
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def topology(self) -> str:
        """``"single"`` or ``"cluster of N masters"`` (:func:`bench.redis_admin.topology`)."""
        return topology(self.url)

    def version(self) -> str:
        return server_version(self.url)


def _cluster_script(*args: str) -> str:
    """Run ``.ci/redis-cluster`` with ``args``; the last line it printed (the URL on start)."""
    done = subprocess.run(
        [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{CLUSTER_SCRIPT.name} {' '.join(args)} failed: {done.stderr}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""
