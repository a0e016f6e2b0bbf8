"""What every peer offers the runner, and the bare ``ProcessPoolExecutor`` floor.

A peer is opened with ``with`` (its workers start and one task warms it up), then asked for
one throughput sample (seconds for ``n`` no-op tasks, submit to the last result), one
latency sample (seconds of each of ``n`` sequential round trips) or one payload sample
(seconds for ``n`` tasks that each take ``data`` and return it, every result checked). Each
peer runs the same :func:`bench.tasks.noop` and :func:`bench.tasks.echo` (arq, which runs
only coroutines, their ``async def`` twins) with two workers, serializes them its own default
way, and waits for results the fastest way its own client offers.
"""

from __future__ import annotations

import concurrent.futures
import time
from types import TracebackType
from typing import Protocol

from bench import tasks


class Peer(Protocol):
    name: str
    variant: str

    def __enter__(self) -> Peer: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def throughput(self, n: int, timeout_s: float) -> float:
        """Seconds from the first submission until all ``n`` results are in."""
        ...

    def latency(self, n: int, timeout_s: float) -> list[float]:
        """Seconds of each of ``n`` sequential submit-and-wait round trips."""
        ...

    def payload(self, n: int, data: bytes, timeout_s: float) -> float:
        """Seconds from the first submission of ``n`` echoes of ``data`` until all are back."""
        ...


def check_echoes(name: str, results: list[object], data: bytes) -> None:
    """Raise unless every result is ``data``: a payload figure is never made of failures."""
    wrong = sum(1 for result in results if result != data)
    if wrong:
        raise RuntimeError(f"{name}: {wrong} of {len(results)} echoes came back wrong")


class PoolPeer:
    """A bare ``concurrent.futures.ProcessPoolExecutor``: the floor without any broker."""

    name = "ProcessPoolExecutor"

    def __init__(self, workers: int) -> None:
        self.variant = f"process x{workers}"
        self._workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> PoolPeer:
        self._pool = concurrent.futures.ProcessPoolExecutor(self._workers)
        for future in [self._pool.submit(tasks.noop) for _ in range(self._workers * 4)]:
            future.result(timeout=60)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            raise RuntimeError("open the peer with `with` first")
        return self._pool

    def throughput(self, n: int, timeout_s: float) -> float:
        start = time.perf_counter()
        futures = [self.pool.submit(tasks.noop) for _ in range(n)]
        done, pending = concurrent.futures.wait(futures, timeout=timeout_s)
        wall = time.perf_counter() - start
        if pending:
            raise TimeoutError(f"{len(pending)} of {n} tasks unfinished")
        for future in done:
            future.result()
        return wall

    def latency(self, n: int, timeout_s: float) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            self.pool.submit(tasks.noop).result(timeout=timeout_s)
            samples.append(time.perf_counter() - start)
        return samples

    def payload(self, n: int, data: bytes, timeout_s: float) -> float:
        start = time.perf_counter()
        futures = [self.pool.submit(tasks.echo, data) for _ in range(n)]
        done, pending = concurrent.futures.wait(futures, timeout=timeout_s)
        wall = time.perf_counter() - start
        if pending:
            raise TimeoutError(f"{len(pending)} of {n} tasks unfinished")
        check_echoes(self.name, [future.result() for future in done], data)
        return wall
