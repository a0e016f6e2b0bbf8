"""Where ``def`` functions run: a pool of worker processes, or of threads.

An engine turns a :class:`~endpoint_agent.worker.Call` into an
:class:`~endpoint_agent.worker.Outcome` without blocking the event loop. The agent never
submits more calls than ``workers`` at once, so a call starts as soon as it is submitted.

* :class:`ProcessEngine` (the default) runs each call in a worker process started with the
  ``spawn`` method, never ``fork``: forking a process that runs an event loop and Redis
  connections copies their state into the child. A worker that dies in the middle of a call
  (``os._exit``, a signal, a segfault) breaks the pool: every call in flight in it ends
  ``failed`` with a ``WorkerLost`` record, and the next call gets a fresh pool. (Per-worker
  setup such as pinning one GPU per process belongs in the pool's initializer.)
* :class:`ThreadEngine` runs calls in threads of the agent's own process: no start-up
  cost and no pickling, but no isolation either; use it for I/O-bound functions.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from endpoint_agent.settings import AgentSettings
from endpoint_agent.worker import Call, Outcome, run_call
from sdk.messages import error_record

WORKER_LOST = "WorkerLost"


class Engine(Protocol):
    """Runs ``def`` calls off the event loop, ``workers`` at a time."""

    name: str
    workers: int

    async def run(self, call: Call) -> Outcome:
        """Run one call to completion; returns a failed outcome rather than raising."""
        ...

    async def aclose(self) -> None:
        """Stop the workers; calls still queued are dropped."""
        ...


class ProcessEngine:
    """Calls run in ``workers`` spawned processes; a crashed worker fails only its pool's calls."""

    name = "process"

    def __init__(self, workers: int, *, start_method: str = "spawn") -> None:
        if start_method == "fork":
            raise ValueError("worker processes are never forked from the agent's event loop")
        self.workers = workers
        self._context = multiprocessing.get_context(start_method)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context)

    async def run(self, call: Call) -> Outcome:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, run_call, call)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            return Outcome.failure(
                error_record(
                    WORKER_LOST,
                    "the worker process running this task exited before it finished "
                    "(os._exit, a signal, a crash, or out of memory)",
                )
            )

    async def aclose(self) -> None:
        await _shutdown(self._pool, wait=True)


class ThreadEngine:
    """Calls run in ``workers`` threads of the agent's process."""

    name = "thread"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fxbroker-worker")

    async def run(self, call: Call) -> Outcome:
        return await asyncio.get_running_loop().run_in_executor(self._pool, run_call, call)

    async def aclose(self) -> None:
        await _shutdown(self._pool, wait=True)


async def _shutdown(pool: Executor, *, wait: bool) -> None:
    await asyncio.to_thread(pool.shutdown, wait=wait, cancel_futures=True)


def make_engine(settings: AgentSettings) -> Engine:
    """The engine ``settings.engine`` names, with ``settings.workers`` workers."""
    if settings.engine == "thread":
        return ThreadEngine(settings.workers)
    return ProcessEngine(settings.workers)
