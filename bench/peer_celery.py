"""Celery with Redis as broker and result backend; a prefork worker of 2 processes.

The worker runs as ``python -m bench.peer_celery REDIS_URL TAG``. Every key both sides make
starts with the run's tag (kombu's and the result backend's ``global_keyprefix``) and the
queue is the run's own. The worker runs without gossip, mingle and heartbeat (cluster
events this single-worker run does not need); everything else is Celery's default.
Results are awaited with ``ResultSet.join_native`` (throughput) and ``AsyncResult.get``
(latency, payload), both pushed through the backend's pub/sub. Payload bytes go
through Celery's default JSON serializer (kombu writes bytes that are not UTF-8 as base64).
"""

from __future__ import annotations

import collections
import sys
import time
from types import TracebackType
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from celery.result import ResultSet  # type: ignore[import-untyped]

from bench import tasks
from bench.peers import check_echoes
from bench.redis_admin import delete_matching
from bench.services import PYTHON, Processes

TASK = "bench.noop"
ECHO = "bench.echo"
PAYLOAD_IN_FLIGHT = 8
"""Payload echoes outstanding at once. Celery's Redis backend pushes every result over pub/sub,
and Redis drops a pub/sub client with over 32 MB of unread output (its default
``client-output-buffer-limit``); Celery then waits for the results it missed until its
timeout. Eight 1 MiB echoes (base64 in JSON) stay far below that and keep both workers busy."""


def make_app(redis_url: str, tag: str) -> Celery:
    """The Celery app both the worker and the client use."""
    app = Celery("bench", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{tag}:"},
        result_backend_transport_options={"global_keyprefix": f"{tag}:"},
        task_default_queue=f"bench-{tag}",
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK)(tasks.noop)
    app.task(name=ECHO)(tasks.echo)
    return app


class CeleryPeer:
    name = "celery"

    def __init__(self, redis_url: str, tag: str, processes: Processes, workers: int) -> None:
        self.variant = f"prefork x{workers}"
        self._url = redis_url
        self._tag = f"celery-{tag}"
        self._processes = processes
        self._workers = workers
        self._app: Celery | None = None
        self._worker: Any = None

    def __enter__(self) -> CeleryPeer:
        self._worker = self._processes.start(
            [PYTHON, "-m", "bench.peer_celery", self._url, self._tag, str(self._workers)]
        )
        self._app = make_app(self._url, self._tag)
        self._app.send_task(TASK).get(timeout=120)  # warm-up: the worker is ready
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._worker is not None:
            self._processes.stop(self._worker)
        if self._app is not None:
            self._app.close()
        delete_matching(self._url, f"{self._tag}:*")

    @property
    def app(self) -> Celery:
        if self._app is None:
            raise RuntimeError("open the peer with `with` first")
        return self._app

    def throughput(self, n: int, timeout_s: float) -> float:
        start = time.perf_counter()
        results = ResultSet([self.app.send_task(TASK) for _ in range(n)], app=self.app)
        results.join_native(timeout=timeout_s)
        wall = time.perf_counter() - start
        if not results.successful():
            raise RuntimeError("celery: some tasks failed")
        for result in results.results:
            result.forget()
        return wall

    def latency(self, n: int, timeout_s: float) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            result = self.app.send_task(TASK)
            result.get(timeout=timeout_s)
            samples.append(time.perf_counter() - start)
            result.forget()
        return samples

    def payload(self, n: int, data: bytes, timeout_s: float) -> float:
        """At most :data:`PAYLOAD_IN_FLIGHT` echoes outstanding, each awaited in order."""
        deadline = time.monotonic() + timeout_s
        start = time.perf_counter()
        waiting: collections.deque[Any] = collections.deque()
        values: list[object] = []
        for _ in range(n):
            waiting.append(self.app.send_task(ECHO, args=[data]))
            if len(waiting) == PAYLOAD_IN_FLIGHT:
                values.append(_collect(waiting.popleft(), deadline))
        while waiting:
            values.append(_collect(waiting.popleft(), deadline))
        wall = time.perf_counter() - start
        check_echoes(self.name, values, data)
        return wall


def _collect(result: Any, deadline: float) -> object:
    """``result``'s value, waited for until ``deadline`` (monotonic); its record forgotten."""
    value = result.get(timeout=max(deadline - time.monotonic(), 0.001))
    result.forget()
    return value


def main(argv: list[str]) -> None:
    redis_url, tag, workers = argv
    app = make_app(redis_url, tag)
    app.worker_main(
        ["worker", "--pool=prefork", f"--concurrency={workers}", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         f"--hostname=bench-{tag}@localhost"]
    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
