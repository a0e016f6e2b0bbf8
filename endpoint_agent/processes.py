"""The process engine: one long-lived worker process per slot, talking over a pipe.

Each slot holds one worker process started with the ``spawn`` method (never ``fork``:
forking a process that runs an event loop and Redis connections copies their state into
the child). With accelerators, slot *i* is pinned to accelerator *i*: its process starts
with ``CUDA_VISIBLE_DEVICES`` set to that id, and so does every replacement.

Workers start in the background as soon as the engine exists; a slot takes calls once its
worker has said it is ready, so a task's walltime never counts a worker's start-up. A call
is one round trip on the slot's pipe: the :class:`~endpoint_agent.worker.Call` goes down,
the :class:`~endpoint_agent.worker.Outcome` comes back. A worker that dies in the
middle of a call (``os._exit``, a segfault, a signal, out of memory) fails only that call,
with a ``WorkerLost`` record that says how it died; the slot gets a fresh process. Cancelling
a call kills its worker (``SIGKILL``) and replaces it: this is how a cancel, a walltime or a
drain stops a running ``def`` function.

Workers ignore ``SIGINT`` (a Ctrl-C reaches the whole process group; the agent decides what
happens to running tasks) and exit when the agent's end of their pipe closes, so a worker
never outlives its agent by more than the task it is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from endpoint_agent import capture
from endpoint_agent.worker import WORKER_LOST, Call, Outcome, run_call
from sdk.messages import error_record

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0
READY = "ready"


def worker_main(conn: Connection, accelerator: str | None) -> None:
    """A worker process: run the calls that arrive on ``conn`` until it closes."""
    if accelerator is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = accelerator
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    capture.install()
    try:
        conn.send(READY)
    except OSError:
        return
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):
            return
        if call is None:
            return
        outcome = run_call(call)
        try:
            conn.send(outcome)
        except OSError:  # the agent is gone
            return


def _round_trip(conn: Connection, call: Call) -> Outcome:
    conn.send(call)
    outcome: Outcome = conn.recv()
    return outcome


def how_it_died(exitcode: int | None) -> str:
    """Words for a worker's exit code."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class _Slot:
    """One worker position: its accelerator (if any) and its current process."""

    def __init__(self, index: int, accelerator: str | None) -> None:
        self.index = index
        self.accelerator = accelerator
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None


class ProcessEngine:
    """Calls run in ``workers`` spawned processes; a dead worker fails only its own call.

    Create it inside a running event loop: it starts its workers in the background."""

    name = "process"

    def __init__(self, workers: int, *, accelerators: Sequence[str] = ()) -> None:
        if accelerators and len(accelerators) != workers:
            raise ValueError("one worker per accelerator")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._io = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fxbroker-pipe")
        self._slots = [_Slot(i, accelerators[i] if accelerators else None) for i in range(workers)]
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._repairs: set[asyncio.Task[None]] = set()
        self._closing = False
        for slot in self._slots:
            self._background(self._launch(slot))

    def _start(self, slot: _Slot) -> None:
        """Start the slot's worker and wait until it is ready (blocking: run in a thread)."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(child, slot.accelerator),
            name=f"fxbroker-worker-{slot.index}",
            daemon=True,
        )
        process.start()
        child.close()  # so the worker's death reads as EOF on our end
        slot.process, slot.conn = process, parent
        try:
            if not parent.poll(READY_TIMEOUT_S) or parent.recv() != READY:
                raise RuntimeError(f"worker {slot.index} did not get ready")
        except (EOFError, OSError) as exc:
            raise RuntimeError(
                f"worker {slot.index} {how_it_died(process.exitcode)} while starting"
            ) from exc

    async def _launch(self, slot: _Slot) -> None:
        try:
            await asyncio.to_thread(self._start, slot)
        except RuntimeError:
            log.exception("a worker process could not start; the engine has one worker less")
            return
        self._idle.put_nowait(slot)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="fxbroker-worker-start")
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def run(self, call: Call, *, walltime_s: float | None = None) -> Outcome:
        slot = await self._idle.get()
        assert slot.conn is not None and slot.process is not None
        loop = asyncio.get_running_loop()
        trip = loop.run_in_executor(self._io, _round_trip, slot.conn, call)
        try:
            async with asyncio.timeout(walltime_s):
                outcome = await asyncio.shield(trip)
        except (asyncio.CancelledError, TimeoutError):
            slot.process.kill()
            self._repair(slot, trip)
            raise
        except (EOFError, OSError):
            exitcode = await asyncio.to_thread(self._reap, slot)
            self._repair(slot, trip)
            return Outcome.failure(
                error_record(
                    WORKER_LOST,
                    f"the worker process running this task {how_it_died(exitcode)} before "
                    "it finished (os._exit, a crash such as a segfault, a signal, or out of "
                    "memory); the worker was replaced",
                )
            )
        self._idle.put_nowait(slot)
        return outcome

    @staticmethod
    def _reap(slot: _Slot) -> int | None:
        assert slot.process is not None
        slot.process.join(JOIN_TIMEOUT_S)
        return slot.process.exitcode

    def _repair(self, slot: _Slot, trip: asyncio.Future[Outcome]) -> None:
        """Replace the slot's (dead or killed) process in the background."""
        self._background(self._replace(slot, trip))

    async def _replace(self, slot: _Slot, trip: asyncio.Future[Outcome]) -> None:
        with contextlib.suppress(BaseException):
            await trip  # the pipe thread sees EOF once the process is gone
        old, conn = slot.process, slot.conn
        if old is not None:
            if old.is_alive():
                old.kill()
            await asyncio.to_thread(old.join, JOIN_TIMEOUT_S)
        if conn is not None:
            conn.close()
        if not self._closing:
            await self._launch(slot)

    async def aclose(self) -> None:
        self._closing = True
        if self._repairs:
            await asyncio.gather(*self._repairs, return_exceptions=True)
        await asyncio.to_thread(self._stop_all)
        self._io.shutdown(wait=False, cancel_futures=True)

    def _stop_all(self) -> None:
        for slot in self._slots:
            if slot.conn is not None and not slot.conn.closed:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(JOIN_TIMEOUT_S)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(JOIN_TIMEOUT_S)
            if slot.conn is not None and not slot.conn.closed:
                slot.conn.close()
