"""Where ``def`` functions run: worker processes (:mod:`endpoint_agent.processes`) or threads.

An engine turns a :class:`~endpoint_agent.worker.Call` into an
:class:`~endpoint_agent.worker.Outcome` without blocking the event loop. The agent never
runs more calls than ``workers`` at once, so a call starts as soon as it is submitted.

Cancelling the coroutine of :meth:`Engine.run` is how the agent stops a call (a cancel
notice, a walltime, a drain that hands the task back): the process engine kills the worker
running it and starts a replacement; the thread engine cannot stop a thread, so it abandons
it: the call's outcome is dropped when the function eventually returns, and the slot it held
is free at once.

* :class:`~endpoint_agent.processes.ProcessEngine` (the default): each call in a worker
  process, isolated from the agent and from other calls; one process per accelerator.
* :class:`ThreadEngine`: each call in a thread of the agent's own process: no start-up cost
  and no pickling, but no isolation either; use it for I/O-bound functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Protocol

from endpoint_agent.processes import ProcessEngine
from endpoint_agent.settings import AgentSettings
from endpoint_agent.worker import Call, Outcome, run_call


class Engine(Protocol):
    """Runs ``def`` calls off the event loop, ``workers`` at a time."""

    name: str
    workers: int

    async def run(self, call: Call, *, walltime_s: float | None = None) -> Outcome:
        """Run one call to completion; returns a failed outcome rather than raising.
        Cancelling the caller stops the call (see the module docstring); so does running
        past ``walltime_s`` once the call has a worker, which raises ``TimeoutError``."""
        ...

    async def aclose(self) -> None:
        """Stop the workers."""
        ...


class ThreadEngine:
    """Calls run in threads of the agent's process, one thread per call."""

    name = "thread"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._numbers = itertools.count(1)

    async def run(self, call: Call, *, walltime_s: float | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def settle(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def target() -> None:
            outcome = run_call(call)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, outcome)

        thread = threading.Thread(
            target=target, name=f"fxbroker-worker-{next(self._numbers)}", daemon=True
        )
        thread.start()
        async with asyncio.timeout(walltime_s):
            return await future

    async def aclose(self) -> None:
        """Nothing to stop: threads of calls still running were abandoned by their task."""


def make_engine(settings: AgentSettings) -> Engine:
    """The engine ``settings.engine`` names, with ``settings.workers`` workers."""
    if settings.engine == "thread":
        return ThreadEngine(settings.workers)
    return ProcessEngine(settings.workers, accelerators=settings.accelerators)
