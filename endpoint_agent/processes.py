"""The process engine: one long-lived worker process per slot, fed batches over a pipe.

Each slot holds one worker process started with the ``spawn`` method (never ``fork``:
forking a process that runs an event loop and Redis connections copies their state into
the child). With accelerators, slot *i* is pinned to accelerator *i*: its process starts
with ``CUDA_VISIBLE_DEVICES`` set to that id, and so does every replacement.

**Batches.** :meth:`ProcessEngine.submit` queues a call in the agent (no asyncio Task, no
thread hop); once per turn of the event loop the engine hands queued calls to its workers,
each worker holding up to ``depth`` calls, all of one turn in one pipe message
(:mod:`endpoint_agent.batches` is the wire and the worker's side). ``depth`` is the
look-ahead learned from observed call times: ``ceil(LOOKAHEAD_WINDOW_S / mean call time)``,
between 1 and ``LOOKAHEAD_MAX``, so no-ops travel in deep batches while calls that take a
second go one per worker (and the tasks behind them stay with the gateway, where another
agent can take them). Outcomes come back coalesced, several per message; one reader thread
per worker hands each message to the event loop in one ``call_soon_threadsafe``, and one
sender thread per worker writes to the pipe, so a worker busy with a long call never blocks
the loop. The code of a function reaches each worker once, not once per call.

**A long call in a deep batch** does not hold up the calls queued behind it: a worker whose
call has run ``STUCK_AFTER_S`` gets no more calls while another has room, and once another
worker runs dry the engine takes back what waits behind the long call (a fence, exact: each
call starts on one worker only) and hands it out again.

Cost once warm, per batch of up to ``LOOKAHEAD_MAX`` no-op calls per worker: one pickle and
pipe message each way, one wake-up of the sender and of the reader thread, one callback in
the loop; per call: a tuple, a ``poll(0)``, and an uncontended lock around two
shared-memory stores in the worker.

**Stopping a call** (:meth:`ProcessEngine.stop`: a cancel, a drain, a lost lease) or a
walltime: a call still queued in the agent is dropped; for one sent to a worker, a fence
decides exactly whether it started (the worker's :class:`~endpoint_agent.batches.Progress`
names the running call): if not, it never will (the calls behind it come back to the
engine's queue with it, and are sent again); if it did, its worker is killed (``SIGKILL`` to
its process group: each worker leads a group of its own, so the subprocesses a call started
die with it) and replaced. Walltime is measured from the moment the worker started the call.

**A worker that dies** (``os._exit``, a segfault, a signal, out of memory, or killed by
the engine) fails only the call it was running, with ``WorkerLost`` saying how it died
(a killed one: the outcome that killed it, cancelled or ``WalltimeExceeded``). Every other
call it held goes back to the front of the engine's queue, to run on another worker or its
replacement: it never left the agent, so no attempt is counted. That includes calls that
finished but whose outcome the worker had not sent yet: they run again (execution is
at-least-once). Outcomes a killed worker sent after the kill are dropped for the same reason.

Workers start in the background as soon as the engine exists; a slot takes calls once its
worker has said it is ready, so a call's walltime never counts a worker's start-up. Workers
lead process groups of their own, so a Ctrl-C at the agent's terminal does not reach them
(they ignore ``SIGINT`` too; the agent decides what happens to running tasks), and exit
when the agent's end of their pipe closes, so a worker never outlives its agent by more
than the call it is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from endpoint_agent.batches import (
    READY,
    CodeBook,
    Job,
    Progress,
    Result,
    batch,
    skip,
    worker_main,
)
from endpoint_agent.worker import WORKER_LOST, Call, Outcome, walltime_exceeded
from sdk.messages import error_record

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0
LOOKAHEAD_WINDOW_S = 0.005
"""How much work (by observed call time) a worker holds beyond the call it runs."""
LOOKAHEAD_MAX = 64
"""Most calls one worker holds at once."""
MEAN_WEIGHT = 0.1
"""Weight of the latest call time in the running mean that sizes the look-ahead."""
STUCK_AFTER_S = 2 * LOOKAHEAD_WINDOW_S
"""A worker whose call has run this long gets no more calls while another has room, and
the calls queued behind it move to a worker that runs dry."""

_CLOSE = object()  # tells a sender thread to end

Done = Callable[[str, Outcome], None]
"""``done(key, outcome)``: how an engine reports a call's end (in the event loop)."""


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


class CallTimes:
    """The running mean of observed call times, and the look-ahead it sizes: ``depth`` is
    ``ceil(LOOKAHEAD_WINDOW_S / mean)`` between 1 and ``LOOKAHEAD_MAX`` (1 until a call
    has been seen)."""

    def __init__(self) -> None:
        self.mean_s: float | None = None
        self.depth = 1

    def observe(self, elapsed_s: float) -> None:
        mean = self.mean_s
        mean = elapsed_s if mean is None else mean + MEAN_WEIGHT * (elapsed_s - mean)
        self.mean_s = mean
        self.depth = max(1, min(LOOKAHEAD_MAX, math.ceil(LOOKAHEAD_WINDOW_S / max(mean, 1e-9))))


@dataclass(slots=True)
class PipeStats:
    """What crossed the engine's pipes (for tests and benchmarks)."""

    batches: int = 0  # messages carrying calls
    calls: int = 0
    codes: int = 0  # calls that carried their function's code
    moved: int = 0  # calls taken back from a worker (behind a long call, or a stop)
    results: int = 0  # messages carrying outcomes
    outcomes: int = 0


@dataclass(slots=True, eq=False)
class _Job:
    """One submitted call, queued in the engine or held by a worker."""

    key: str
    call: Call
    walltime_s: float | None
    done: Done
    seq: int = 0
    worker: _Worker | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class _Worker:
    """One worker process of a slot, with its pipe and its two pipe threads."""

    slot: int
    process: BaseProcess
    conn: Connection
    progress: Progress
    jobs: dict[int, _Job] = field(default_factory=dict)  # sent, no outcome yet; by seq
    book: CodeBook = field(default_factory=CodeBook)
    outgoing: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    threads: list[threading.Thread] = field(default_factory=list)
    alive: bool = True

    def running(self) -> _Job | None:
        """The call the worker runs now (or finished a moment ago, outcome not yet sent)."""
        return self.jobs.get(self.progress.seq)


class ProcessEngine:
    """Calls run in ``workers`` spawned processes; a dead worker fails only its own call.

    Create it inside a running event loop: it starts its workers in the background."""

    name = "process"

    def __init__(self, workers: int, *, accelerators: Sequence[str] = ()) -> None:
        if accelerators and len(accelerators) != workers:
            raise ValueError("one worker per accelerator")
        self.workers = workers
        self.stats = PipeStats()
        self._loop = asyncio.get_running_loop()
        self._context = multiprocessing.get_context("spawn")
        self._accelerators: list[str | None] = [*accelerators] or [None] * workers
        self._live: list[_Worker | None] = [None] * workers
        self._pending: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}  # every call submitted and not yet done or stopped
        self._seq = itertools.count(1)
        self._fences = itertools.count(1)
        self._recheck: asyncio.TimerHandle | None = None
        self._times = CallTimes()
        self._pump_due = False
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        for slot in range(workers):
            self._spawn(self._launch(slot))

    # -- the look-ahead ----------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Most calls one worker holds now (see the module docstring)."""
        return self._times.depth

    @property
    def lookahead(self) -> int:
        """Calls this engine can usefully hold beyond one per worker."""
        return self.workers * (self._times.depth - 1)

    # -- the engine interface ----------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(1 for w in self._live if w is not None and w.running() is not None)

    def started(self, key: str) -> bool:
        job = self._jobs.get(key)
        return job is not None and job.worker is not None and job.worker.progress.seq >= job.seq

    def submit(self, key: str, call: Call, *, walltime_s: float | None, done: Done) -> None:
        job = _Job(key, call, walltime_s, done)
        self._jobs[key] = job
        self._pending.append(job)
        self._schedule_pump()

    def stop(self, key: str) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        self._cancel_timer(job)
        worker = job.worker
        if worker is None or not worker.alive:
            return  # queued here (dropped when the pump meets it) or its worker is gone
        del worker.jobs[job.seq]
        seen = worker.progress.seq
        started: int | None = seen
        if seen < job.seq:  # not started when we looked: make sure it never does
            started = self._take_back(worker, job.seq)
            if started is None:  # no lock: a plain skip, which a start may race
                self._send(worker, skip([job.seq]))
        if started == job.seq:
            self._kill(worker)

    # -- handing calls to workers ------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_due:
            self._pump_due = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand queued calls to the workers with room, one message per worker."""
        self._pump_due = False
        ready = [w for w in self._live if w is not None and w.alive]
        if not ready:
            return
        depth = self.depth
        now = time.monotonic()
        stuck = {w.slot for w in ready if self._stuck_for(w, now) >= 0}
        out: dict[int, list[Job]] = {}
        while self._pending:
            worker = min(ready, key=lambda w: len(w.jobs) + (depth if w.slot in stuck else 0))
            if len(worker.jobs) >= depth or worker.slot in stuck:
                break
            job = self._pending.popleft()
            if self._jobs.get(job.key) is not job:
                continue  # stopped while queued
            job.seq, job.worker = next(self._seq), worker
            worker.jobs[job.seq] = job
            call = job.call
            code: str | None = None
            if call.function_id not in worker.book:
                worker.book.add(call.function_id)
                code = call.code
                self.stats.codes += 1
            out.setdefault(worker.slot, []).append(
                (job.seq, call.function_id, code, call.payload, call.allowed, call.limits)
            )
            if job.walltime_s is not None:
                job.timer = self._loop.call_later(job.walltime_s, self._check_walltime, job)
        for slot, jobs in out.items():
            target = self._live[slot]
            assert target is not None
            self.stats.batches += 1
            self.stats.calls += len(jobs)
            self._send(target, batch(jobs))
        if not self._pending and any(not w.jobs for w in ready):
            self._rebalance(ready, now)

    @staticmethod
    def _stuck_for(worker: _Worker, now: float) -> float:
        """How long past ``STUCK_AFTER_S`` the worker's running call is (negative: not
        stuck yet; ``-inf``: nothing runs)."""
        if worker.running() is None:
            return -math.inf
        return now - worker.progress.started_at - STUCK_AFTER_S

    def _rebalance(self, ready: list[_Worker], now: float) -> None:
        """A worker ran dry: take back the calls queued behind another's long call (a
        fence, see :mod:`endpoint_agent.batches`) and hand them out again."""
        moved = False
        soonest = math.inf
        for victim in ready:
            if len(victim.jobs) < 2:
                continue
            late = self._stuck_for(victim, now)
            if late < 0:
                soonest = min(soonest, -late)
                continue
            moved = self._take_back(victim) is not None or moved
        if not moved and soonest < math.inf and self._recheck is None:
            self._recheck = self._loop.call_later(soonest, self._recheck_stuck)

    def _take_back(self, worker: _Worker, stopped: int = 0) -> int | None:
        """Fence ``worker`` and put every call queued behind its running one back at the
        front of the queue (see :mod:`endpoint_agent.batches`); ``stopped`` names a call
        already taken from it that must not start either. Returns the running ``seq``
        (``None``: the lock could not be had and nothing moved)."""
        fence = next(self._fences)
        started = worker.progress.fence(fence)
        if started is None:
            return None
        seqs = [seq for seq in sorted(worker.jobs) if seq > started]
        self._send(worker, skip([*seqs, stopped] if stopped > started else seqs, fence))
        moved = [worker.jobs.pop(seq) for seq in seqs]
        for job in moved:
            self._cancel_timer(job)
            job.worker, job.seq = None, 0
        self.stats.moved += len(moved)
        self._pending.extendleft(reversed(moved))
        self._schedule_pump()
        return started

    def _recheck_stuck(self) -> None:
        self._recheck = None
        self._schedule_pump()

    def _send(self, worker: _Worker, message: object) -> None:
        worker.outgoing.put(message)

    # -- outcomes, walltimes, deaths ---------------------------------------------------

    def _results(self, worker: _Worker, results: list[Result]) -> None:
        """Outcomes from ``worker`` (in the loop, from its reader thread)."""
        if not worker.alive:
            return  # killed: every call it held went back to the queue
        self.stats.results += 1
        self.stats.outcomes += len(results)
        for seq, outcome, elapsed_s in results:
            self._times.observe(elapsed_s)
            job = worker.jobs.pop(seq, None)
            if job is not None:
                self._finish(job, outcome)
        self._schedule_pump()

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        self._cancel_timer(job)
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
            job.done(job.key, outcome)

    @staticmethod
    def _cancel_timer(job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _check_walltime(self, job: _Job) -> None:
        job.timer = None
        worker = job.worker
        if self._jobs.get(job.key) is not job or worker is None or not worker.alive:
            return
        assert job.walltime_s is not None
        progress = worker.progress
        if progress.seq > job.seq:
            return  # finished: its outcome is on its way
        if progress.seq < job.seq:
            delay = job.walltime_s  # not started yet: it cannot run out before then
        else:
            delay = progress.started_at + job.walltime_s - time.monotonic()
            if delay <= 0:
                del worker.jobs[job.seq]
                self._kill(worker)
                self._finish(job, walltime_exceeded(job.walltime_s))
                return
        job.timer = self._loop.call_later(delay, self._check_walltime, job)

    def _kill(self, worker: _Worker) -> None:
        """Kill ``worker`` and what its call started (its running call was settled by the
        caller) and replace it."""
        self._retire(worker)
        _kill_group(worker)
        self._spawn(self._replace(worker, None))

    def _lost(self, worker: _Worker) -> None:
        """``worker``'s pipe closed (in the loop, from its reader thread)."""
        if not worker.alive:
            return  # killed by the engine: handled already
        running = worker.running()
        if running is not None:
            del worker.jobs[running.seq]
        self._retire(worker)
        self._spawn(self._replace(worker, running))

    def _retire(self, worker: _Worker) -> None:
        """Take ``worker`` out of service; its calls go back to the front of the queue."""
        worker.alive = False
        if self._live[worker.slot] is worker:
            self._live[worker.slot] = None
        held = [worker.jobs[seq] for seq in sorted(worker.jobs)]
        worker.jobs.clear()
        for job in held:
            self._cancel_timer(job)
            job.worker, job.seq = None, 0
        self._pending.extendleft(reversed(held))
        self._send(worker, _CLOSE)
        self._schedule_pump()

    async def _replace(self, worker: _Worker, running: _Job | None) -> None:
        exitcode = await asyncio.to_thread(_reap, worker)
        if running is not None:
            self._finish(
                running,
                Outcome.failure(
                    error_record(
                        WORKER_LOST,
                        f"the worker process running this task {how_it_died(exitcode)} "
                        "before it finished (os._exit, a crash such as a segfault, a signal, "
                        "or out of memory); the worker was replaced",
                    )
                ),
            )
        if not self._closing:
            await self._launch(worker.slot)

    # -- worker processes --------------------------------------------------------------

    def _start(self, slot: int) -> _Worker:
        """Start a worker for ``slot`` and wait until it is ready (blocking: in a thread)."""
        parent, child = self._context.Pipe()
        progress = Progress(self._context)
        process = self._context.Process(
            target=worker_main,
            args=(child, progress, self._accelerators[slot]),
            name=f"fxbroker-worker-{slot}",
            daemon=True,
        )
        process.start()
        child.close()  # so the worker's death reads as EOF on our end
        try:
            if not parent.poll(READY_TIMEOUT_S) or parent.recv() != READY:
                raise RuntimeError(f"worker {slot} did not get ready")
        except (EOFError, OSError) as exc:
            parent.close()
            raise RuntimeError(
                f"worker {slot} {how_it_died(process.exitcode)} while starting"
            ) from exc
        return _Worker(slot, process, parent, progress)

    async def _launch(self, slot: int) -> None:
        try:
            worker = await asyncio.to_thread(self._start, slot)
        except RuntimeError:
            log.exception("a worker process could not start; the engine has one worker less")
            return
        if self._closing:
            worker.process.kill()
            await asyncio.to_thread(_reap, worker)
            return
        for target, name in ((self._read, "reader"), (self._write, "sender")):
            thread = threading.Thread(
                target=target, args=(worker,), name=f"fxbroker-pipe-{slot}-{name}", daemon=True
            )
            worker.threads.append(thread)
            thread.start()
        self._live[slot] = worker
        self._schedule_pump()

    def _read(self, worker: _Worker) -> None:
        """The reader thread: every message to the loop, then the pipe's end."""
        while True:
            try:
                results = worker.conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._loop.call_soon_threadsafe(self._results, worker, results)
            except RuntimeError:  # the loop is closed: nobody listens
                return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._lost, worker)

    @staticmethod
    def _write(worker: _Worker) -> None:
        """The sender thread: writes what the loop queued until told to end."""
        while True:
            message = worker.outgoing.get()
            if message is _CLOSE:
                return
            try:
                worker.conn.send(message)
            except OSError:  # the worker is gone; the reader reports it
                return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="fxbroker-worker")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        self._closing = True
        if self._recheck is not None:
            self._recheck.cancel()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        workers = [w for w in self._live if w is not None]
        self._live = [None] * self.workers
        for worker in workers:
            worker.alive = False
            self._send(worker, None)  # the worker exits after its current call
            self._send(worker, _CLOSE)
        await asyncio.gather(*(asyncio.to_thread(_reap, w) for w in workers))


def _kill_group(worker: _Worker) -> None:
    """``SIGKILL`` to ``worker``'s process group (it made one of its own as it started), or
    to the worker alone if that group is gone already."""
    pid = worker.process.pid
    try:
        if pid is not None and os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except ProcessLookupError:
        pass
    worker.process.kill()


def _reap(worker: _Worker) -> int | None:
    """Wait for ``worker`` to end (killing it if it will not), close its pipe and threads."""
    process = worker.process
    process.join(JOIN_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join(JOIN_TIMEOUT_S)
    for thread in worker.threads:
        if thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)
    worker.conn.close()
    return process.exitcode
