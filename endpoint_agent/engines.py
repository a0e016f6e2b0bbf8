"""Where ``def`` functions run: worker processes (:mod:`endpoint_agent.processes`) or threads.

An engine takes calls without an asyncio Task each: :meth:`Engine.submit` queues one and
returns at once; the engine runs it when a worker is free and reports its
:class:`~endpoint_agent.worker.Outcome` through the ``done(key, outcome)`` callback, in the
event loop, never from inside ``submit`` or ``stop``. A call that runs past its
``walltime_s`` (counted from its start on a worker) is reported with ``WalltimeExceeded``.

:meth:`Engine.stop` is how the agent takes a call back (a cancel notice, a drain that hands
the task back, a lease lost): ``done`` is never called for it afterwards, and the agent
settles it itself. The process engine drops a queued call, skips one its worker has not
started and kills the worker running one; the thread engine cannot stop a thread, so it
abandons it: the call's outcome is dropped when the function eventually returns, and the
slot it held is free at once. The parsl engine drops a call it has not handed to Parsl yet;
one in Parsl runs to its end (the HTE can neither withdraw nor kill a task), its outcome
dropped, and keeps its slot until then.

* :class:`~endpoint_agent.processes.ProcessEngine` (the default): calls in worker processes,
  in batches, isolated from the agent and from other calls; one process per accelerator.
* :class:`ThreadEngine`: each call in a thread of the agent's own process: no start-up cost
  and no pickling, but no isolation either; use it for I/O-bound functions.
* :class:`~endpoint_agent.rq_engine.RqEngine`: each call an rq job on the site's own Redis,
  run by the site's ``rq worker`` processes on any number of nodes.
* :class:`~endpoint_agent.parsl_engine.ParslEngine`: each call a Parsl app call on a
  ``HighThroughputExecutor``, whose provider reaches Slurm, PBS, Kubernetes or this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from endpoint_agent.processes import CallTimes, Done, ProcessEngine
from endpoint_agent.settings import AgentSettings
from endpoint_agent.worker import Call, Outcome, run_call, walltime_exceeded
from service_common.errors import SettingsError


class Engine(Protocol):
    """Runs ``def`` calls off the event loop, ``workers`` at a time."""

    name: str
    workers: int

    @property
    def lookahead(self) -> int:
        """Calls worth holding beyond one per worker (the agent's credit grows by it)."""
        ...

    @property
    def running(self) -> int:
        """Calls running now."""
        ...

    def started(self, key: str) -> bool:
        """Whether the call ``key`` has started (it is not merely queued)."""
        ...

    def submit(self, key: str, call: Call, *, walltime_s: float | None, done: Done) -> None:
        """Queue ``call`` under ``key`` (unique among calls not yet done); ``done(key,
        outcome)`` reports its end (see the module docstring)."""
        ...

    def stop(self, key: str) -> None:
        """Take the call ``key`` back: it is stopped if running, and never reported."""
        ...

    async def aclose(self) -> None:
        """Stop the workers."""
        ...


async def run_one(engine: Engine, call: Call, *, walltime_s: float | None = None) -> Outcome:
    """Run one call on ``engine`` and wait for its outcome (a convenience for one-off
    calls; the agent submits without waiting)."""
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    key = f"one-{id(future)}"

    def done(_: str, outcome: Outcome) -> None:
        if not future.done():
            future.set_result(outcome)

    engine.submit(key, call, walltime_s=walltime_s, done=done)
    try:
        return await future
    finally:
        if not future.done():
            engine.stop(key)


@dataclass(slots=True, eq=False)
class _ThreadJob:
    key: str
    call: Call
    walltime_s: float | None
    done: Done
    timer: asyncio.TimerHandle | None = None


class ThreadEngine:
    """Calls run in threads of the agent's process, one thread per call, ``workers`` at
    a time; quick calls are held ahead like the process engine's (:class:`CallTimes`), so
    the agent asks the gateway for them before a thread frees."""

    name = "thread"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._loop = asyncio.get_running_loop()
        self._numbers = itertools.count(1)
        self._pending: deque[_ThreadJob] = deque()
        self._jobs: dict[str, _ThreadJob] = {}  # submitted, not done or stopped
        self._running: dict[str, _ThreadJob] = {}
        self._times = CallTimes()

    @property
    def lookahead(self) -> int:
        return self.workers * (self._times.depth - 1)

    @property
    def running(self) -> int:
        return len(self._running)

    def started(self, key: str) -> bool:
        return key in self._running

    def submit(self, key: str, call: Call, *, walltime_s: float | None, done: Done) -> None:
        job = _ThreadJob(key, call, walltime_s, done)
        self._jobs[key] = job
        self._pending.append(job)
        self._start_more()

    def stop(self, key: str) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        if job.timer is not None:
            job.timer.cancel()
        if self._running.pop(key, None) is not None:
            self._start_more()  # its thread is abandoned; its slot is free

    def _start_more(self) -> None:
        while self._pending and len(self._running) < self.workers:
            job = self._pending.popleft()
            if self._jobs.get(job.key) is not job:
                continue  # stopped while queued
            self._running[job.key] = job
            if job.walltime_s is not None:
                job.timer = self._loop.call_later(job.walltime_s, self._expire, job)
            thread = threading.Thread(
                target=self._target, args=(job,), name=f"fxbroker-worker-{next(self._numbers)}"
            )
            thread.daemon = True
            thread.start()

    def _target(self, job: _ThreadJob) -> None:
        started = time.perf_counter()
        outcome = run_call(job.call)
        elapsed_s = time.perf_counter() - started
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            self._loop.call_soon_threadsafe(self._end, job, outcome, elapsed_s)

    def _end(self, job: _ThreadJob, outcome: Outcome, elapsed_s: float) -> None:
        self._times.observe(elapsed_s)
        if self._running.get(job.key) is not job:
            return  # stopped or past its walltime: abandoned
        del self._running[job.key]
        del self._jobs[job.key]
        if job.timer is not None:
            job.timer.cancel()
        job.done(job.key, outcome)
        self._start_more()

    def _expire(self, job: _ThreadJob) -> None:
        if self._running.get(job.key) is not job:
            return
        assert job.walltime_s is not None
        del self._running[job.key]
        del self._jobs[job.key]
        job.done(job.key, walltime_exceeded(job.walltime_s))
        self._start_more()

    async def aclose(self) -> None:
        """Nothing to stop: threads of calls still running were abandoned by their task."""


def make_engine(settings: AgentSettings) -> Engine:
    """The engine ``settings.engine`` names, with ``settings.workers`` workers."""
    if settings.engine == "thread":
        return ThreadEngine(settings.workers)
    if settings.engine == "rq":
        try:  # imported here: rq is an optional dependency
            from endpoint_agent.rq_engine import RqEngine
        except ImportError as exc:
            raise SettingsError(
                f"engine 'rq' needs the rq package ({exc}): pip install 'fxbroker[rq]'"
            ) from exc

        return RqEngine(settings.workers, redis_url=settings.rq_redis_url, queue=settings.rq_queue)
    if settings.engine == "parsl":
        try:  # imported here: parsl is an optional dependency
            from endpoint_agent.parsl_engine import ParslEngine
        except ImportError as exc:
            raise SettingsError(
                f"engine 'parsl' needs the parsl package ({exc}): pip install 'fxbroker[parsl]'"
            ) from exc

        return ParslEngine(
            settings.workers, config_path=settings.parsl_config, run_dir=settings.parsl_run_dir
        )
    return ProcessEngine(settings.workers, accelerators=settings.accelerators)
