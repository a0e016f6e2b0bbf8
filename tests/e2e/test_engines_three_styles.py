"""The ``rq`` and ``parsl`` engines, end to end: 1,000 tasks through each of the three client
styles with the results right and in order, and a raising task in each style that comes back
as ``TaskFailed`` with the remote traceback, the checks the process engine passes
(:mod:`tests.e2e.styles`).

One platform of processes per engine (:func:`~tests.e2e.conftest.running_platform`), which
the module's tests for that engine share: ``fxbroker web``, ``fxbroker ws`` and one agent
from ``fxbroker endpoint start``, whose ``config.toml`` names the engine and its site:

* ``rq``: two ``rq worker`` processes on a private Redis of the site's own
  (:func:`~tests.engine_sites.rq_site`);
* ``parsl``: a ``HighThroughputExecutor`` whose ``LocalProvider`` starts one block of two
  workers, every port on loopback (:func:`~tests.engine_sites.parsl_config`).

Each style's test also checks that its ``def`` tasks ran on the engine's site (rq's count of
the jobs its workers finished; the Parsl tasks its log shows launched), so an agent that
quietly ran them on another engine fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker

from tests.e2e.conftest import Platform, running_platform
from tests.e2e.styles import (
    assert_async_runs,
    assert_executor_runs,
    assert_failures_in_every_style,
    assert_polling_runs,
)
from tests.engine_sites import REPO, RQ_QUEUE, parsl_config, rq_site

N = 1000
ENGINES = ("rq", "parsl")
IN_FLIGHT = 4
"""The agent's ``workers``: two calls more in the engine's site than it has workers, so a
worker finds its next call waiting while the agent turns the last one around."""
COUNT_SETTLES_S = 10.0
"""How long rq may take to count a job whose outcome the client already has: rq counts it
once its work-horse ended, a moment after the job pushed its outcome."""


@dataclass(frozen=True)
class EnginePlatform:
    engine: str
    platform: Platform
    site: str
    """``rq``: the URL of the site's Redis; ``parsl``: Parsl's run directory."""

    def tasks_run(self) -> int:
        """How many calls the engine's site has taken so far: for ``rq`` the jobs its workers
        finished (each worker's ``successful_job_count``), for ``parsl`` the tasks Parsl's
        log shows launched on its executor."""
        if self.engine == "rq":
            client = redis.Redis.from_url(self.site)
            try:
                return sum(w.successful_job_count for w in Worker.all(connection=client))
            finally:
                client.close()
        logs = Path(self.site).glob("*/parsl.log")
        return sum(log.read_text().count(" launched on executor ") for log in logs)

    def assert_ran(self, at_least: int) -> None:
        """The engine's site took ``at_least`` calls (waiting up to
        :data:`COUNT_SETTLES_S` for rq to count the last ones)."""
        deadline = time.monotonic() + COUNT_SETTLES_S
        while (ran := self.tasks_run()) < at_least:
            assert time.monotonic() < deadline, (
                f"the {self.engine} site ran {ran} calls, not {at_least}"
            )
            time.sleep(0.05)


@contextlib.contextmanager
def engine_site(engine: str, folder: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """The engine's site, running while inside: the endpoint's ``config.toml`` keys that
    send its ``def`` tasks there, and the :attr:`EnginePlatform.site`."""
    if engine == "rq":
        with rq_site(folder / "rq-site") as server:
            yield {"engine": "rq", "rq_redis_url": server.url, "rq_queue": RQ_QUEUE}, server.url
    else:
        run_dir = str(folder / "runinfo")
        config = str(parsl_config(folder))
        yield {"engine": "parsl", "parsl_config": config, "parsl_run_dir": run_dir}, run_dir


@pytest.fixture(scope="module", params=ENGINES)
def engine_platform(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnginePlatform]:
    engine: str = request.param
    tmp = tmp_path_factory.mktemp(f"{engine}-platform")
    with engine_site(engine, tmp) as (endpoint_config, site):
        # The endpoint's file names its engine; the variable sets the in-flight cap (it wins
        # over the file, as over the platform's own FXBROKER_WORKERS).
        extra_env = {"FXBROKER_WORKERS": str(IN_FLIGHT), "PYTHONPATH": str(REPO)}
        with running_platform(
            redis_url, tmp, extra_env=extra_env, endpoint_config=endpoint_config
        ) as started:
            yield EnginePlatform(engine, started, site)


def test_client_polling_runs_1000_tasks(engine_platform: EnginePlatform) -> None:
    before = engine_platform.tasks_run()
    assert_polling_runs(engine_platform.platform, N)
    engine_platform.assert_ran(before + N + 1)


def test_async_client_runs_1000_tasks(engine_platform: EnginePlatform) -> None:
    before = engine_platform.tasks_run()
    assert_async_runs(engine_platform.platform, N)
    engine_platform.assert_ran(before + N)  # the async def task runs in the agent's loop


def test_executor_runs_1000_tasks(engine_platform: EnginePlatform) -> None:
    before = engine_platform.tasks_run()
    assert_executor_runs(engine_platform.platform, N)
    engine_platform.assert_ran(before + N)


def test_a_raise_comes_back_as_task_failed_in_every_style(
    engine_platform: EnginePlatform,
) -> None:
    before = engine_platform.tasks_run()
    assert_failures_in_every_style(engine_platform.platform)
    engine_platform.assert_ran(before + 3)  # rq counts a job that returned the raise as done
