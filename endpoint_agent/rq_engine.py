"""The rq engine: ``def`` calls become rq jobs on the site's own Redis, for its ``rq worker``s.

A site that already runs rq workers (on any number of nodes) lets one agent hand them its
endpoint's ``def`` tasks: ``engine = "rq"`` with ``rq_redis_url`` (the *site's* Redis,
never the platform's: the agent still reaches the platform only through the gateway) and
``rq_queue``. Each call is one job of :func:`endpoint_agent.rq_job.run`, which the workers
must be able to import (fxbroker installed beside them, or on their ``PYTHONPATH``);
start them with the default forking worker: ``rq worker -c endpoint_agent.rq_job --url
REDIS_URL QUEUE`` (``-c`` imports fxbroker once in the worker, not in every work-horse).

**In flight.** At most ``workers`` jobs are in rq at once (queued there or running): the
rest of what the agent holds waits in the engine (the look-ahead is ``workers``, so a
freed slot is filled without waiting for the gateway), and backpressure holds as with the
other engines. Size ``workers`` to the site's rq workers for this queue, or a little above,
so a worker finds its next job waiting in rq while the agent turns the last one around.

**Cost.** One rq ``enqueue_many`` transaction per turn of the event loop's submits (in one
thread of the engine, so the loop never blocks on the site's Redis). Outcomes come back
pushed, not polled: the job pushes ``started`` and its outcome onto the engine's event
list, which one reader reads with a blocking ``BLPOP`` plus one ``LPOP`` of up to
``READ_BATCH`` more, so a burst of outcomes costs one round trip. Every ``poll_s`` the
reader also reads the rq status of every job in flight in one pipeline: a job that rq ended
without an outcome (its work-horse died: ``os._exit``, a crash, a signal, out of memory; or
its rq worker was lost and rq failed the job) is failed with ``WorkerLost`` after two polls.
The job pushes its outcome itself, so a worker that dies while its work-horse runs loses
nothing; a node lost with both is seen once rq's maintenance (another worker's, every
``--maintenance-interval``) fails the abandoned job.

**Walltime.** rq's ``job_timeout`` carries the walltime, rounded up to whole seconds (rq
counts timeouts in seconds); rq's timeout ends the job and it is reported with
``WalltimeExceeded``. Without a walltime the job has none (``-1``).

**Stopping a call** (:meth:`RqEngine.stop`: a cancel, a drain, a lost lease). A call not in
rq yet is dropped. For one in rq, a fence decides exactly whether it started (see
:mod:`endpoint_agent.rq_job`): if not, it never will, and the job is deleted from rq; if it
did, rq's stop-job command (``rq.command.send_stop_job_command``) kills its work-horse.
Where this cannot stop a job: rq's ``SimpleWorker`` runs jobs in the worker's own process
and ignores stop-job, so a started job runs to its end (its outcome is dropped; its slot is
held until then); a worker whose pub/sub connection is down misses the command likewise.
On a drain, jobs not started are taken back and handed back, started ones get the grace.

Execution is at-least-once, as everywhere: an agent killed with jobs in rq leaves them to
run with nobody to collect them (the gateway hands their tasks to another agent after their
lease); the engine's keys on the site's Redis expire a day after its last poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from rq import Callback, Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from endpoint_agent import rq_job
from endpoint_agent.processes import Done
from endpoint_agent.worker import WORKER_LOST, Call, Outcome, walltime_exceeded
from sdk.messages import error_record
from service_common.retry import DEFAULT_BACKOFF, Outage

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

POLL_S = 1.0
"""How often the reader reads the rq status of the jobs in flight (and at most how long one
blocking read of the event list waits)."""
READ_BATCH = 1000
"""Most messages one read of the event list takes beyond the first."""
KEY_TTL_S = 24 * 3600
"""The engine's keys on the site's Redis live this long after its last poll."""
FAILURE_TTL_S = 24 * 3600
"""How long rq keeps a failed job (its traceback, for the site's operators)."""
JOB_FUNCTION = "endpoint_agent.rq_job.run"
ON_FAILURE = Callback("endpoint_agent.rq_job.on_failure")
ON_STOPPED = Callback("endpoint_agent.rq_job.on_stopped")
_ENDED = frozenset({"finished", "failed", "stopped", "canceled"})


@dataclass(slots=True, eq=False)
class _RqJob:
    """One submitted call: waiting in the engine, or a job in rq (``job_id`` set)."""

    key: str
    call: Call
    walltime_s: float | None
    done: Done
    job_id: str = ""
    enqueued: bool = False  # rq has it (its enqueue transaction succeeded)
    started: bool = False
    stopped: bool = False  # taken back by the agent: never reported
    suspect: bool = False  # rq said it ended, and no outcome had come


def job_timeout(walltime_s: float | None) -> int:
    """rq's ``job_timeout`` for a walltime: whole seconds, rounded up; ``-1``: none."""
    return -1 if walltime_s is None else max(1, math.ceil(walltime_s))


class RqEngine:
    """Calls run as rq jobs on the site's Redis at ``redis_url``, queue ``queue``, at most
    ``workers`` in rq at once. Create it inside a running event loop."""

    name = "rq"

    def __init__(self, workers: int, *, redis_url: str, queue: str, poll_s: float = POLL_S) -> None:
        self.workers = workers
        self.poll_s = poll_s
        self._loop = asyncio.get_running_loop()
        self._token = uuid.uuid4().hex
        self._events, self._fence = rq_job.channel_keys(self._token)
        self._numbers = itertools.count(1)
        self._redis = redis.Redis.from_url(redis_url)  # rq's, used in the ops thread only
        self._queue = Queue(queue, connection=self._redis)
        self._aredis = aioredis.Redis.from_url(redis_url)  # the reader's
        self._ops = ThreadPoolExecutor(1, thread_name_prefix="fxbroker-rq")
        self._outage = Outage(f"the rq engine's Redis ({queue})", logger=log)
        self._pending: deque[_RqJob] = deque()
        self._jobs: dict[str, _RqJob] = {}  # by key: submitted, not done or stopped
        self._inflight: dict[str, _RqJob] = {}  # by job id: given to rq, not resolved
        self._pump_due = False
        self._sending = False
        self._retry: asyncio.TimerHandle | None = None
        self._failures = 0
        self._ended: list[str] = []  # job ids whose fence entry can go
        self._reader = asyncio.create_task(self._read(), name="fxbroker-rq-reader")

    # -- the engine interface ----------------------------------------------------------

    @property
    def lookahead(self) -> int:
        return self.workers

    @property
    def running(self) -> int:
        return sum(1 for job in self._inflight.values() if job.started and not job.stopped)

    def started(self, key: str) -> bool:
        job = self._jobs.get(key)
        return job is not None and job.started

    def submit(self, key: str, call: Call, *, walltime_s: float | None, done: Done) -> None:
        job = _RqJob(key, call, walltime_s, done)
        self._jobs[key] = job
        self._pending.append(job)
        self._schedule_pump()

    def stop(self, key: str) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        job.stopped = True
        if job.job_id:  # in rq (or on its way): the fence decides, in the ops thread
            self._run_op(self._take_back, [job.job_id], then=self._taken_back)

    # -- handing calls to rq -----------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_due:
            self._pump_due = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Enqueue what fits in the ``workers`` slots, one transaction for the lot."""
        self._pump_due = False
        if self._sending or self._retry is not None:
            return  # the batch on its way (or its retry) pumps again when it is done
        batch: list[_RqJob] = []
        while self._pending and len(self._inflight) < self.workers:
            job = self._pending.popleft()
            if job.stopped:
                continue
            job.job_id = f"fxbroker-{self._token}-{next(self._numbers)}"
            self._inflight[job.job_id] = job
            batch.append(job)
        if not batch:
            return
        self._sending = True
        enqueue = [
            Queue.prepare_data(
                JOB_FUNCTION,
                args=rq_job.call_args(self._events, self._fence, job.call),
                timeout=job_timeout(job.walltime_s),
                result_ttl=0,  # the outcome travels on the event list; rq deletes the job
                failure_ttl=FAILURE_TTL_S,
                job_id=job.job_id,
                description=f"fxbroker task {job.key}",
                on_failure=ON_FAILURE,
                on_stopped=ON_STOPPED,
            )
            for job in batch
        ]
        self._run_op(self._enqueue, enqueue, then=lambda f: self._sent(batch, f))

    def _enqueue(self, enqueue: list[Any]) -> None:
        """(ops thread) One transaction: the jobs, and the fence's expiry."""
        with self._redis.pipeline() as pipe:
            self._queue.enqueue_many(enqueue, pipeline=pipe)
            pipe.hset(self._fence, "-", "the fence of one fxbroker agent's rq engine")
            pipe.expire(self._fence, KEY_TTL_S)
            pipe.execute()

    def _sent(self, batch: list[_RqJob], future: Future[None]) -> None:
        self._sending = False
        exc = future.exception()
        if exc is None:
            self._failures = 0
            self._outage.recovered()
            for job in batch:
                job.enqueued = True
            self._schedule_pump()
            return
        self._outage.failed(exc)
        for job in reversed(batch):  # retried with the same job ids: the fence runs each once
            if not job.stopped and self._inflight.pop(job.job_id, None) is job:
                self._pending.appendleft(job)
        self._failures += 1
        self._retry = self._loop.call_later(
            DEFAULT_BACKOFF.delay_s(self._failures), self._retry_pump
        )

    def _retry_pump(self) -> None:
        self._retry = None
        self._schedule_pump()

    def _take_back(self, job_ids: list[str]) -> list[str]:
        """(ops thread) Fence ``job_ids``: those not started never will, and are deleted
        from rq (returned); those started are sent rq's stop-job command."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hsetnx(self._fence, job_id, rq_job.STOPPED)
            won = [job_id for job_id, fenced in zip(job_ids, pipe.execute(), strict=True) if fenced]
        for job_id in job_ids:
            with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
                if job_id in won:
                    Job.fetch(job_id, connection=self._redis).delete()
                else:
                    send_stop_job_command(self._redis, job_id)
        return won

    def _taken_back(self, future: Future[list[str]]) -> None:
        exc = future.exception()
        if exc is not None:
            # The job runs (or ran) to its end; its outcome is dropped when it comes.
            log.warning("could not take an rq job back: %s: %s", type(exc).__name__, exc)
            return
        for job_id in future.result():
            self._inflight.pop(job_id, None)
        self._schedule_pump()

    def _run_op(self, fn: Callable[[A], R], arg: A, *, then: Callable[[Future[R]], None]) -> None:
        """Run ``fn(arg)`` in the ops thread (in order with every other), then ``then(future)``
        in the loop."""
        future = self._ops.submit(fn, arg)

        def back(f: Future[R]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(then, f)

        future.add_done_callback(back)

    # -- outcomes ----------------------------------------------------------------------

    async def _read(self) -> None:
        """The reader: the event list as it fills, and rq's status of the jobs every
        ``poll_s``."""
        loop = self._loop
        next_poll = loop.time() + self.poll_s
        failures = 0
        while True:
            try:
                item = await self._aredis.blpop([self._events], timeout=self.poll_s)
                if item is not None:
                    more = await self._aredis.lpop(self._events, READ_BATCH)
                    self._messages([item[1], *(more or [])])
                await self._forget_ended()
                if loop.time() >= next_poll:
                    await self._poll()
                    next_poll = loop.time() + self.poll_s
            except redis.RedisError as exc:
                self._outage.failed(exc)
                failures += 1
                await asyncio.sleep(DEFAULT_BACKOFF.delay_s(failures))
                continue
            except Exception:  # a fault of ours must not end the reader, and every outcome
                log.exception("the rq engine's reader failed; it reads on")
                failures += 1
                await asyncio.sleep(DEFAULT_BACKOFF.delay_s(failures))
                continue
            if failures:
                failures = 0
                self._outage.recovered()

    def _messages(self, raw: Sequence[Any]) -> None:
        """Messages of the event list (pickled bytes, see :mod:`endpoint_agent.rq_job`)."""
        for message in raw:
            try:
                job_id, kind, value = rq_job.decode(message)
            except Exception:
                log.exception("a message on the rq engine's event list does not decode")
                continue
            job = self._inflight.get(job_id)
            if job is None:
                continue  # resolved already (taken back, or a second end of one job)
            if kind == "started":
                job.started = True
                continue
            if kind == "outcome":
                outcome: Outcome = value
            elif kind == "timeout":
                outcome = walltime_exceeded(job.walltime_s or job_timeout(job.walltime_s))
            elif kind == "failed":
                outcome = Outcome.failure(value)
            else:
                outcome = _lost("was stopped by rq's stop-job command from outside this agent")
            self._resolve(job, outcome)
        self._schedule_pump()

    def _resolve(self, job: _RqJob, outcome: Outcome) -> None:
        del self._inflight[job.job_id]
        self._ended.append(job.job_id)
        if not job.stopped and self._jobs.get(job.key) is job:
            del self._jobs[job.key]
            job.done(job.key, outcome)

    async def _forget_ended(self) -> None:
        """Drop the fence entries of jobs that ended (one ``HDEL`` for the lot), so the
        fence holds only jobs in flight. Entries of jobs taken back before they started
        stay (a worker that had already dequeued one must still find it fenced) until the
        engine's keys expire."""
        ended, self._ended = self._ended, []
        if ended:
            try:
                await self._aredis.hdel(self._fence, *ended)
            except BaseException:
                self._ended[:0] = ended
                raise

    async def _poll(self) -> None:
        """Read rq's status of every job in flight in one pipeline: one that ended without
        an outcome in two polls in a row is lost (see the module docstring)."""
        job_ids = [job_id for job_id, job in self._inflight.items() if job.enqueued]
        async with self._aredis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(Job.key_for(job_id), "status")
            pipe.expire(self._events, KEY_TTL_S)
            pipe.expire(self._fence, KEY_TTL_S)
            replies = await pipe.execute()
        lost = False
        for job_id, status in zip(job_ids, replies, strict=False):
            job = self._inflight.get(job_id)
            if job is None:
                continue
            ended = status is None or status.decode() in _ENDED
            if ended and job.suspect:
                state = "is gone" if status is None else f"ended {status.decode()}"
                self._resolve(
                    job,
                    _lost(
                        f"{state} in rq without an outcome (its work-horse died: os._exit, a "
                        "crash, a signal or out of memory; or its rq worker was lost, or "
                        "cannot import fxbroker)"
                    ),
                )
                lost = True
            job.suspect = ended
        if lost:
            self._schedule_pump()

    async def aclose(self) -> None:
        """Stop the reader and the ops thread (after the stops it was given) and close the
        connections. Jobs still in rq are the agent's to have stopped first (a drain)."""
        if self._retry is not None:
            self._retry.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await asyncio.to_thread(self._ops.shutdown, wait=True)
        with contextlib.suppress(redis.RedisError):
            await self._forget_ended()
        await self._aredis.aclose()
        self._redis.close()


def _lost(why: str) -> Outcome:
    return Outcome.failure(error_record(WORKER_LOST, f"the rq job running this task {why}"))
