"""The engine rows: the same no-ops on an agent of the ``rq`` and of the ``parsl`` engine,
beside the process engine, so what each engine adds per task is known.

Each engine's agent is one more ``fxbroker endpoint start`` of the platform, with two
workers like ``bench-process``; :class:`EngineSites` runs what each one hands its tasks to:

* **rq**: the site's own Redis (a private ``redis-server`` on loopback, never the
  platform's) and two ``rq worker -c endpoint_agent.rq_job`` processes on it, rq's forking
  worker as a site runs it for fxbroker (one fork per job);
* **Parsl**: the documented local example (``docs/parsl/local.py``: a ``LocalProvider``
  block of two workers, every port on loopback), which the agent starts and stops itself,
  its run directory in the run's folder.

Throughput is :func:`bench.fx_workloads.executor_wall` of ``engine_tasks`` no-ops (the
client style of the *Executor, process x2* row); latency is ``engine_round_trips``
sequential ``await fx.run(...)`` of an ``AsyncClient``, p50 and p99. The figures are
informational: no target holds them, the table prints them with their ratio to the process
engine's (:func:`bench.report.engine_ratios`).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from rq import Worker

from bench import fx_workloads as fx
from bench import tasks
from bench.platform import AgentSpec, Deployment
from bench.report import ENGINES, FXBROKER, Figures, engine_variant, percentile
from bench.services import PYTHON, REPO_ROOT, Processes, RedisServer
from bench.settings import BenchSettings

RQ = "bench-rq"
PARSL = "bench-parsl"
WORKERS = 2
"""Workers of each engine's agent, and rq workers (Parsl workers) the site runs for it."""
RQ_QUEUE = "fxbroker-bench"
PARSL_CONFIG = REPO_ROOT / "docs" / "parsl" / "local.py"
ENDPOINTS = {"process": fx.PROCESS, "rq": RQ, "parsl": PARSL}
"""The endpoint each engine row runs on, by engine (``process``: the platform's own)."""


class EngineSites:
    """``with EngineSites(...) as sites:`` runs the rq site (its Redis, two ``rq worker``s)
    inside the block; :attr:`agents` are the agent specs of the rq and Parsl endpoints, to
    start inside it. Everything it started is stopped when the block ends."""

    def __init__(self, workdir: Path, *, start_timeout_s: float) -> None:
        self._workdir = workdir
        self._timeout_s = start_timeout_s
        self._redis = RedisServer(None)  # always private: the site's, not the platform's
        self._processes: Processes | None = None
        self.agents: list[AgentSpec] = []

    def __enter__(self) -> EngineSites:
        self._redis.__enter__()
        try:
            self._processes = Processes(self._workdir / "rq-site.log")
            # The workers know only the site's Redis, not the platform's nor its settings.
            env = {k: v for k, v in os.environ.items()
                   if k != "REDIS_URL" and not k.startswith("FXBROKER_")}  # fmt: skip
            workers = [self._processes.start(self._rq_worker(i), env) for i in range(WORKERS)]
            self._wait_for(workers)
        except BaseException:
            self.close()
            raise
        rq_env = {"FXBROKER_RQ_REDIS_URL": self._redis.url, "FXBROKER_RQ_QUEUE": RQ_QUEUE}
        parsl_env = {"FXBROKER_PARSL_CONFIG": str(PARSL_CONFIG),
                     "FXBROKER_PARSL_RUN_DIR": str(self._workdir / "parsl-runinfo")}  # fmt: skip
        self.agents = [AgentSpec(RQ, "rq", WORKERS, env=rq_env),
                       AgentSpec(PARSL, "parsl", WORKERS, env=parsl_env)]  # fmt: skip
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the rq workers, then the site's Redis."""
        if self._processes is not None:
            self._processes.close()
            self._processes = None
        self._redis.__exit__(None, None, None)

    def check(self) -> None:
        """Raise if an rq worker stopped on its own."""
        if self._processes is not None:
            self._processes.check()

    def _rq_worker(self, number: int) -> list[str]:
        """``rq worker`` as a site runs it for fxbroker: the forking worker, with ``-c
        endpoint_agent.rq_job`` so fxbroker is imported once in it, not in every fork."""
        return [PYTHON, "-m", "rq.cli", "worker", "--url", self._redis.url,
                "-c", "endpoint_agent.rq_job", "--name", f"bench-site-{number}",
                "--worker-ttl", "30", "--logging_level", "WARNING", RQ_QUEUE]  # fmt: skip

    def _wait_for(self, workers: list[subprocess.Popen[bytes]]) -> None:
        """Block until every rq worker registered with the site's Redis."""
        client = redis.Redis.from_url(self._redis.url)
        try:
            deadline = time.monotonic() + self._timeout_s
            while len(Worker.all(connection=client)) < len(workers):
                for worker in workers:
                    if worker.poll() is not None:
                        raise RuntimeError(f"rq worker {worker.pid} exited while starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the rq workers did not start in {self._timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()


def engine_row(figures: Figures, deployment: Deployment, engine: str, s: BenchSettings) -> None:
    """One sample of ``engine``'s rows: throughput through the Executor, then the
    AsyncClient's sequential round trips."""
    endpoint = ENDPOINTS[engine]
    variant = engine_variant(engine, WORKERS)
    n = s.engine_tasks
    wall = fx.executor_wall(deployment, endpoint, tasks.noop, n, s)
    figures.add(ENGINES, FXBROKER, variant, "throughput", n / wall, unit="tasks/s",
                better="higher")  # fmt: skip
    ms = [x * 1000 for x in fx.async_round_trips(deployment, endpoint, s.engine_round_trips, s)]
    for q in (50, 99):
        figures.add(ENGINES, FXBROKER, variant, f"p{q}", percentile(ms, q), unit="ms",
                    better="lower")  # fmt: skip
