"""fxbroker deployed as it is in production, one process per component, on loopback.

``fxbroker web`` (uvicorn), ``fxbroker ws`` and one ``fxbroker endpoint start`` agent per
agent configuration run as separate processes; the benchmark's clients run in the calling
process. SQL is a SQLite file of the run's own unless a database URL is given (it is off the
hot path: one write per task group). Every Redis key lives under the run's own prefix and is
deleted when the platform stops. The per-user rate limit is switched off: it would measure
the limiter, not the platform.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.redis_admin import delete_matching
from bench.services import PYTHON, REPO_ROOT, Processes, python_env, wait_for_port
from fxbroker import Client
from fxbroker.embedded import free_port

FXBROKER = [PYTHON, "-m", "fxbroker.cli"]


@dataclass(frozen=True)
class AgentSpec:
    """One agent process: its endpoint's name, engine, workers, async slots and prefetch;
    ``env``: more of its settings (``FXBROKER_*`` variables), such as an engine's site."""

    name: str
    engine: str
    workers: int
    max_concurrency: int = 1000
    prefetch: int = 0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """Where the running platform is, and the endpoint id of each agent by name."""

    url: str
    ws_url: str
    token: str
    endpoints: dict[str, str]
    key_prefix: str
    redis_url: str

    def client(self) -> Client:
        return Client(self.url, self.token, ws_url=self.ws_url)


class Platform:
    """``with Platform(...) as deployment:`` runs web, ws and the agents inside the block.

    ``idle_endpoints`` are registered with no agent serving them (tasks submitted there stay
    queued)."""

    def __init__(
        self,
        *,
        redis_url: str,
        database_url: str | None,
        workdir: Path,
        tag: str,
        agents: list[AgentSpec],
        idle_endpoints: list[str],
        start_timeout_s: float,
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = f"fxbench-{tag}"
        self._workdir = workdir
        self._database_url = database_url or f"sqlite+aiosqlite:///{workdir / 'fxbroker.db'}"
        self._agents = agents
        self._idle = idle_endpoints
        self._timeout_s = start_timeout_s
        self.processes = Processes(workdir / "fxbroker.log")

    def __enter__(self) -> Deployment:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.processes.close()
        delete_matching(self.redis_url, f"{self.key_prefix}:*")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FXBROKER_")}
        env.update(
            REDIS_URL=self.redis_url,
            DATABASE_URL=self._database_url,
            FXBROKER_KEY_PREFIX=self.key_prefix,
            FXBROKER_HOME=str(self._workdir / "home"),
            FXBROKER_RATE_LIMIT_PER_S="0",
        )
        env.update(extra)
        return python_env(env)

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [*FXBROKER, *args], env=self._env(), cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=self._timeout_s,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"fxbroker {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def _start(self) -> Deployment:
        web_port, ws_port = free_port(), free_port()
        url, ws_url = f"http://127.0.0.1:{web_port}", f"ws://127.0.0.1:{ws_port}"
        self._run("db", "upgrade")
        token = self._run("user", "create", "bench").splitlines()[-1]
        env = self._env(FXBROKER_WS_URL=ws_url, FXBROKER_WEB_URL=url, FXBROKER_URL=url,
                        FXBROKER_TOKEN=token)  # fmt: skip
        web = self.processes.start([*FXBROKER, "web", "--port", str(web_port)], env)
        ws = self.processes.start([*FXBROKER, "ws", "--port", str(ws_port)], env)
        wait_for_port(web_port, timeout_s=self._timeout_s, proc=web)
        wait_for_port(ws_port, timeout_s=self._timeout_s, proc=ws)
        endpoints: dict[str, str] = {}
        with Client(url, token, ws_url=ws_url) as client:
            for name in self._idle:
                endpoints[name] = client.register_endpoint(name)
        # Each agent registers its own endpoint on first start (and so gets its credential)
        # and reaches the platform through the gateway only: it is given no Redis or SQL.
        private = {"REDIS_URL", "DATABASE_URL", "FXBROKER_KEY_PREFIX"}
        for agent in self._agents:
            agent_env = {k: v for k, v in env.items() if k not in private}
            agent_env.update(
                FXBROKER_ENGINE=agent.engine,
                FXBROKER_WORKERS=str(agent.workers),
                FXBROKER_MAX_CONCURRENCY=str(agent.max_concurrency),
                FXBROKER_PREFETCH=str(agent.prefetch),
            )
            agent_env.update(agent.env)
            proc = self.processes.start([*FXBROKER, "endpoint", "start", agent.name], agent_env)
            endpoints[agent.name] = self._registered(agent.name, proc)
        return Deployment(url, ws_url, token, endpoints, self.key_prefix, self.redis_url)

    def _registered(self, name: str, proc: subprocess.Popen[bytes]) -> str:
        """The id endpoint ``name``'s agent stored once registered (it waits for it)."""
        id_file = self._workdir / "home" / "endpoints" / name / "endpoint_id"
        deadline = time.monotonic() + self._timeout_s
        while not (id_file.exists() and id_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent of {name} did not register its endpoint")
            time.sleep(0.02)
        return id_file.read_text().strip()
