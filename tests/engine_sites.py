"""The sites the ``rq`` and ``parsl`` engines hand their ``def`` tasks to, as the tests start
them: :func:`rq_site` (two real ``rq worker`` processes on a Redis of the site's own) and
:func:`parsl_config` (a Parsl config of this machine: a ``LocalProvider`` of two workers, every
port on loopback). :mod:`tests.agent.test_rq_engine` and :mod:`tests.agent.test_parsl_engine`
run an in-process agent on them; :mod:`tests.e2e.test_engines_three_styles` runs
``fxbroker endpoint start`` on them.

The workers of both import fxbroker through ``PYTHONPATH`` (this checkout), as a site's
workers would from an installed fxbroker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.private_redis import PrivateRedis

REPO = Path(__file__).resolve().parents[1]
RQ_QUEUE = "fxbroker-test"
RQ_WORKERS = 2
PARSL_WORKERS = 2
PARSL_EXAMPLES = REPO / "docs" / "parsl"
WORKERS_START_S = 30.0
WORKERS_STOP_S = 15.0


@contextlib.contextmanager
def rq_site(folder: Path) -> Iterator[PrivateRedis]:
    """The site's own Redis (a private ``redis-server`` in ``folder``, never the platform's)
    and :data:`RQ_WORKERS` ``rq worker`` processes (rq's forking worker) on it, their logs in
    ``folder``; all stopped on leaving."""
    with PrivateRedis(folder / "redis", appendfsync="no") as server:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("REDIS_URL", None)  # the workers know only the site's Redis
        with contextlib.ExitStack() as logs:
            workers: list[subprocess.Popen[bytes]] = []
            try:
                for number in range(RQ_WORKERS):
                    log = logs.enter_context((folder / f"worker-{number}.log").open("wb"))
                    command = rq_worker_command(server.url, number)
                    workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
                wait_for_rq_workers(server.url, workers)
                yield server
            finally:
                _stop(workers)


def rq_worker_command(url: str, number: int) -> list[str]:
    """``rq worker`` as a site runs it for fxbroker: the forking worker (so rq's stop-job
    can stop a job), ``-c endpoint_agent.rq_job`` so fxbroker is imported once in the
    worker rather than in every work-horse it forks."""
    name = f"site-{number}-{os.getpid()}"
    return [sys.executable, "-m", "rq.cli", "worker", "--url", url, "-c", "endpoint_agent.rq_job",
            "--name", name, "--worker-ttl", "30", RQ_QUEUE]  # fmt: skip


def wait_for_rq_workers(url: str, workers: list[subprocess.Popen[bytes]]) -> None:
    """Block until the workers registered with the site's Redis (a readiness wait, as for
    a port: jobs would queue meanwhile, but a worker that cannot start fails here)."""
    from rq import Worker

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + WORKERS_START_S
        while len(Worker.all(connection=client)) < len(workers):
            for worker in workers:
                assert worker.poll() is None, f"rq worker {worker.pid} exited while starting"
            assert time.monotonic() < deadline, (
                f"the rq workers did not start within {WORKERS_START_S:g} s"
            )
            time.sleep(0.05)
    finally:
        client.close()


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker (rq's warm shutdown), wait, SIGKILL the ones still running."""
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(WORKERS_STOP_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def parsl_config(folder: Path) -> Path:
    """Write ``folder/parsl_config.py`` and return its path: the documented local example
    (one block of :data:`PARSL_WORKERS` workers, every port on loopback), quicker to start
    its block and to see a dead worker than a site needs. Its workers import fxbroker only
    if the agent that starts them has this checkout on ``PYTHONPATH``."""
    config = folder / "parsl_config.py"
    quick = 'executor["heartbeat_period"] = 1\nconfig = {"strategy_period": 0.2}\n'
    config.write_text((PARSL_EXAMPLES / "local.py").read_text() + quick)
    return config
