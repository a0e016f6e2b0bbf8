"""A private Redis Cluster that a test may stop, kill and start again on the same ports.

The twin of :class:`tests.private_redis.PrivateRedis` for Redis Cluster: ``masters``
``redis-server`` processes in cluster mode on free loopback ports, no replicas, each in a
directory of its own under ``data_dir`` (its ``nodes.conf`` and, when ``appendfsync`` is
given, its append-only file)::

    with PrivateCluster(tmp_path / "cluster", appendfsync="always") as cluster:
        ... cluster.url ...                 # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
        cluster.restart(down_s=1.5)         # every node: SIGTERM, wait, start again
        cluster.restart_node(0, down_s=1.5, kill=True)

:meth:`~PrivateCluster.start` creates the cluster on its first start (``redis-cli --cluster
create``, every slot spread over the masters) and returns once every node reports
``cluster_state:ok`` with all 16384 slots covered. Started again, the nodes rejoin from their
``nodes.conf`` and reload their AOF: the same slots, and with AOF on the same data (what
SIGKILL loses is as for :class:`~tests.private_redis.PrivateRedis`). Without ``appendfsync``
nothing is persisted but the cluster layout.

A single node down longer than :data:`NODE_TIMEOUT_MS` is marked failed by the others, and
with no replica to take over its slots the whole cluster answers ``CLUSTERDOWN`` until the
node is back and the others clear the mark (up to twice that timeout after they set it).
:meth:`~PrivateCluster.restart_node` waits through that.

The methods block, as :class:`~tests.private_redis.PrivateRedis`'s do: from an event loop call
them with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
import redis

from fxbroker.embedded import free_port, wait_for_port
from tests.private_redis import HOST, reap, require_redis_server

SLOTS = 16384
"""Hash slots of every Redis Cluster."""
BUS_PORT_OFFSET = 10000
"""Redis's cluster bus listens on the data port plus this."""
NODE_TIMEOUT_MS = 5000
"""``cluster-node-timeout``: how long a node may be unreachable before the others mark it
failed (Redis's default is 15 s; shorter, so a test waits less for the mark to clear)."""
READY_TIMEOUT_S = 60.0
"""How long :meth:`PrivateCluster.start` waits for ``cluster_state:ok`` on every node."""


def require_redis_cli() -> str:
    """The ``redis-cli`` binary (it creates the cluster); skips the calling test without one."""
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.skip("redis-cli is not installed")
    return binary


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (plus :data:`BUS_PORT_OFFSET`) is free too."""
    while True:
        port = free_port(HOST)
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + BUS_PORT_OFFSET))
            except OSError:
                continue  # taken
        return port


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of the node on ``port`` as a dict of strings."""
    with redis.Redis(host=HOST, port=port, socket_timeout=2.0) as node:
        raw = node.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return {str(key): str(value) for key, value in raw.items()}


class PrivateCluster:
    """``masters`` cluster-mode ``redis-server`` processes keeping their files in
    ``data_dir/<port>``; ``appendfsync`` (``always``, ``everysec`` or ``no``) turns AOF on,
    ``None`` leaves nothing but ``nodes.conf`` on disk."""

    def __init__(self, data_dir: Path, *, masters: int = 3, appendfsync: str | None = None) -> None:
        if masters < 3:
            raise ValueError(f"Redis Cluster needs at least 3 masters, not {masters}")
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.ports: tuple[int, ...] = ()
        while len(set(self.ports)) != masters:
            self.ports = tuple(free_cluster_port() for _ in range(masters))
        self.starts = 0
        """How many times the whole cluster was started."""
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    @property
    def url(self) -> str:
        """``redis+cluster://HOST:PORT,...``: every node as a seed."""
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self.ports)

    @property
    def running(self) -> bool:
        """Every node's process is running (not whether the cluster is ``ok``)."""
        return all(proc is not None and proc.poll() is None for proc in self._procs)

    @property
    def pids(self) -> tuple[int, ...]:
        """The process ids of the nodes running now."""
        return tuple(proc.pid for proc in self._procs if proc is not None and proc.poll() is None)

    def node_dir(self, i: int) -> Path:
        return self.data_dir / str(self.ports[i])

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> PrivateCluster:
        """Start every node that is not running, create the cluster if its slots were never
        assigned, and wait until every node reports ``cluster_state:ok``."""
        if self.running:
            raise RuntimeError(f"the cluster on ports {self.ports} is already running")
        self.starts += 1
        try:
            for i in range(len(self.ports)):
                if not self._running(i):
                    self._start_node(i, timeout_s=timeout_s)
            if cluster_info(self.ports[0]).get("cluster_slots_assigned") == "0":
                self._create()
            self.wait_until_ok(timeout_s=timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every node: each fsyncs its AOF and exits."""
        for i in range(len(self.ports)):
            self._reap(i, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL every node: nothing more is written."""
        for i in range(len(self.ports)):
            self._reap(i, signal.SIGKILL)

    def restart(self, *, down_s: float = 0.0, kill: bool = False) -> None:
        """Stop every node (``kill``: SIGKILL), stay down ``down_s`` seconds, start them again
        on the same ports and directories, and wait for ``cluster_state:ok``."""
        if kill:
            self.kill()
        else:
            self.stop()
        if down_s > 0:
            time.sleep(down_s)  # the outage itself: how long the cluster stays away
        self.start()

    def restart_node(self, i: int, *, down_s: float = 0.0, kill: bool = False) -> None:
        """Stop node ``i`` alone (``kill``: SIGKILL), stay down ``down_s`` seconds, start it
        again, and wait until every node reports ``cluster_state:ok`` once more."""
        self._reap(i, signal.SIGKILL if kill else signal.SIGTERM)
        if down_s > 0:
            time.sleep(down_s)  # the outage itself
        self._start_node(i, timeout_s=READY_TIMEOUT_S)
        self.wait_until_ok(timeout_s=READY_TIMEOUT_S + 2 * NODE_TIMEOUT_MS / 1000)

    def wait_until_ok(self, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until every node reports ``cluster_state:ok``, knows every other node and
        sees all :data:`SLOTS` slots served."""
        deadline = time.monotonic() + timeout_s
        expected = {
            "cluster_state": "ok",
            "cluster_slots_ok": str(SLOTS),
            "cluster_known_nodes": str(len(self.ports)),
        }
        while True:
            seen: dict[int, dict[str, str]] = {}
            for port in self.ports:
                try:
                    info = cluster_info(port)
                except redis.RedisError as exc:  # LOADING, or not accepting yet
                    info = {"error": str(exc)}
                seen[port] = {key: info.get(key, "") for key in (*expected, "error")}
            if all(all(s[k] == v for k, v in expected.items()) for s in seen.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster on {self.ports} is not ok: {seen}")
            time.sleep(0.1)

    def _running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def _start_node(self, i: int, *, timeout_s: float) -> None:
        binary = require_redis_server()
        port, folder = self.ports[i], self.node_dir(i)
        folder.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.appendfsync is not None
            else ["--appendonly", "no"]
        )
        proc = subprocess.Popen(
            [
                binary, "--port", str(port), "--bind", HOST, "--save", "", *persistence,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--dir", str(folder), "--logfile", str(folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._procs[i] = proc
        try:
            wait_for_port(HOST, port, timeout_s=timeout_s)
        except TimeoutError:
            self._reap(i, signal.SIGKILL)
            raise

    def _create(self) -> None:
        """``redis-cli --cluster create``: the slots spread over the masters, no replicas."""
        nodes = [f"{HOST}:{port}" for port in self.ports]
        done = subprocess.run(
            [require_redis_cli(), "--cluster", "create", *nodes, "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=READY_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def _reap(self, i: int, sig: signal.Signals) -> None:
        proc, self._procs[i] = self._procs[i], None
        reap(proc, sig)

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
