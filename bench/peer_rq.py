"""RQ: ``SimpleWorker`` processes (one job at a time each, no fork per job) on a queue of the
run's own.

Each worker runs as ``python -m bench.peer_rq REDIS_URL QUEUE NAME``. Jobs are enqueued with
``Queue.enqueue_many`` (one pipeline; arguments pickled, RQ's default) and awaited with
``Job.latest_result(timeout=...)``, which blocks on the job's result stream. Queue, job and
worker names carry the run's tag, so its keys are found and deleted afterwards; the worker
leaves RQ's shared worker set on exit.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.results import Result

from bench import tasks
from bench.peers import check_echoes
from bench.redis_admin import delete_matching
from bench.services import PYTHON, Processes


class RqPeer:
    name = "rq"

    def __init__(self, redis_url: str, tag: str, processes: Processes, workers: int) -> None:
        self.variant = f"SimpleWorker x{workers}"
        self._url = redis_url
        self._tag = f"rq-{tag}"
        self._processes = processes
        self._workers = workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self._redis: Redis | None = None
        self._queue: Queue | None = None
        self._count = 0

    def __enter__(self) -> RqPeer:
        queue_name = f"bench-{self._tag}"
        for i in range(self._workers):
            self._procs.append(self._processes.start(
                [PYTHON, "-m", "bench.peer_rq", self._url, queue_name, f"{self._tag}-w{i}"]
            ))  # fmt: skip
        self._redis = Redis.from_url(self._url)
        self._queue = Queue(queue_name, connection=self._redis)
        self._wait(self._enqueue(self._workers), 120)  # warm-up: the workers are ready
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self._procs:
            self._processes.stop(proc)
        if self._redis is not None:
            self._redis.close()
        delete_matching(self._url, f"*{self._tag}*")

    def _enqueue(self, n: int, fn: Callable[..., object] = tasks.noop,
                 args: tuple[object, ...] = ()) -> list[Job]:  # fmt: skip
        if self._queue is None:
            raise RuntimeError("open the peer with `with` first")
        first, self._count = self._count, self._count + n
        datas = [
            Queue.prepare_data(fn, args=args, job_id=f"{self._tag}-{i}")
            for i in range(first, first + n)
        ]
        return self._queue.enqueue_many(datas)

    def _wait(self, jobs: list[Job], timeout_s: float) -> list[object]:
        """Every job's return value, in order, once each has succeeded."""
        deadline = time.monotonic() + timeout_s
        values: list[object] = []
        for job in jobs:
            left = math.ceil(deadline - time.monotonic())
            if left < 1:
                raise TimeoutError("rq: results did not come in time")
            result = job.latest_result(timeout=left)
            if result is None or result.type != Result.Type.SUCCESSFUL:
                raise RuntimeError(f"rq: job {job.id} did not succeed: {result!r}")
            values.append(result.return_value)
        return values

    def throughput(self, n: int, timeout_s: float) -> float:
        start = time.perf_counter()
        self._wait(self._enqueue(n), timeout_s)
        return time.perf_counter() - start

    def latency(self, n: int, timeout_s: float) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            self._wait(self._enqueue(1), timeout_s)
            samples.append(time.perf_counter() - start)
        return samples

    def payload(self, n: int, data: bytes, timeout_s: float) -> float:
        start = time.perf_counter()
        values = self._wait(self._enqueue(n, tasks.echo, (data,)), timeout_s)
        wall = time.perf_counter() - start
        check_echoes(self.name, values, data)
        return wall


def main(argv: list[str]) -> None:
    redis_url, queue_name, name = argv
    connection = Redis.from_url(redis_url)
    worker = SimpleWorker([Queue(queue_name, connection=connection)], connection=connection,
                          name=name)  # fmt: skip
    worker.work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main(sys.argv[1:])
