"""arq: one worker process running the ``async def`` no-op and echo (arq runs only coroutines).

The worker runs as ``python -m bench.peer_arq REDIS_URL QUEUE POLL_S``. arq workers poll
their queue; the poll delay is set to the benchmark's polling interval (arq's default is
0.5 s, which would measure the timer), and clients poll for results at the same interval
(as ``Job.result(poll_delay=...)`` does). Everything else is arq's default (``max_jobs=10``). Queue
and job ids carry the run's tag, so its keys are found and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Worker, func

from bench import tasks
from bench.peers import check_echoes
from bench.redis_admin import delete_matching
from bench.services import PYTHON, Processes

ENQUEUE_AT_ONCE = 50
"""Enqueues in flight at once (each holds a pooled connection for its WATCH)."""
T = TypeVar("T")


class ArqPeer:
    name = "arq"
    variant = "worker x1, async"

    def __init__(self, redis_url: str, tag: str, processes: Processes, poll_s: float) -> None:
        self._url = redis_url
        self._tag = f"arq-{tag}"
        self._queue = f"bench-{self._tag}"
        self._processes = processes
        self._poll_s = poll_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._count = 0

    def __enter__(self) -> ArqPeer:
        self._proc = self._processes.start(
            [PYTHON, "-m", "bench.peer_arq", self._url, self._queue, str(self._poll_s)]
        )
        asyncio.run(self._session(lambda pool: self._run(pool, 1, 120)))  # warm-up
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._processes.stop(self._proc)
        delete_matching(self._url, f"*{self._tag}*")

    async def _session(self, body: Callable[[ArqRedis], Awaitable[T]]) -> T:
        pool = await create_pool(RedisSettings.from_dsn(self._url),
                                 default_queue_name=self._queue)  # fmt: skip
        try:
            return await body(pool)
        finally:
            await pool.aclose()

    async def _run(
        self, pool: ArqRedis, n: int, timeout_s: float, fn: str = "noop", *args: object
    ) -> list[object]:
        """Enqueue ``n`` jobs of ``fn(*args)``; their results, in order, once all succeeded."""
        first, self._count = self._count, self._count + n
        jobs: list[Job] = []
        for chunk in range(first, first + n, ENQUEUE_AT_ONCE):
            last = min(chunk + ENQUEUE_AT_ONCE, first + n)
            enqueued = await asyncio.gather(
                *(pool.enqueue_job(fn, *args, _job_id=f"{self._tag}-{i}")
                  for i in range(chunk, last))
            )  # fmt: skip
            jobs += [j for j in enqueued if j is not None]
        if len(jobs) != n:
            raise RuntimeError(f"arq: {n - len(jobs)} jobs were not enqueued")
        deadline = time.monotonic() + timeout_s
        return [await self._result(job, deadline) for job in jobs]

    async def _result(self, job: Job, deadline: float) -> object:
        """``Job.result`` without its race (it reads the result and the queue in two
        commands, and calls a job finished in between "not found"): poll the result alone."""
        while (info := await job.result_info()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"arq: job {job.job_id} did not finish in time")
            await asyncio.sleep(self._poll_s)
        if not info.success:
            raise RuntimeError(f"arq: job {job.job_id} failed: {info.result!r}")
        return info.result

    def throughput(self, n: int, timeout_s: float) -> float:
        async def body(pool: ArqRedis) -> float:
            start = time.perf_counter()
            await self._run(pool, n, timeout_s)
            return time.perf_counter() - start

        return asyncio.run(self._session(body))

    def latency(self, n: int, timeout_s: float) -> list[float]:
        async def body(pool: ArqRedis) -> list[float]:
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                await self._run(pool, 1, timeout_s)
                samples.append(time.perf_counter() - start)
            return samples

        return asyncio.run(self._session(body))

    def payload(self, n: int, data: bytes, timeout_s: float) -> float:
        async def body(pool: ArqRedis) -> float:
            start = time.perf_counter()
            values = await self._run(pool, n, timeout_s, "echo", data)
            wall = time.perf_counter() - start
            check_echoes(self.name, values, data)
            return wall

        return asyncio.run(self._session(body))


async def _work(redis_url: str, queue: str, poll_s: float) -> None:
    worker = Worker(
        functions=[func(tasks.async_noop, name="noop"), func(tasks.async_echo, name="echo")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=queue,
        poll_delay=poll_s,
        handle_signals=True,
    )
    await worker.async_run()


def main(argv: list[str]) -> None:
    redis_url, queue, poll_s = argv
    asyncio.run(_work(redis_url, queue, float(poll_s)))


if __name__ == "__main__":
    main(sys.argv[1:])
