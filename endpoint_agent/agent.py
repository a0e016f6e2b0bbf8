"""The endpoint agent: read tasks of one endpoint, run them, write their outcomes.

::

    async with Agent(settings) as agent:
        await agent.run()            # until agent.stop(); run(burst=True) drains and returns

One loop reads the endpoint's stream through the ``agents`` consumer group (new entries,
and entries claimed from lost agents), starts the tasks it read
(:mod:`service_common.tasks.stream`), resolves their functions (:mod:`endpoint_agent.functions`),
runs ``async def`` functions in this event loop and ``def`` functions in the engine's
workers (:mod:`endpoint_agent.engines`), and hands each outcome to the batched writer
(:mod:`endpoint_agent.results`). Beside the loop: the heartbeat, the lease keeper and the
cancel listener (:mod:`service_common.tasks`, shared with the gateway).

**How many entries one read asks for.** The agent cannot know a task's kind before reading
it, so it reads as if the next tasks were like the last ones:

* *sync-shaped* (the initial shape, and after any read that held a ``def`` function):
  ``COUNT = workers + prefetch - held``, every held task that is not a running ``async def``
  counting against the workers (``prefetch`` is 0 unless configured);
* *async-shaped* (after a read that held only ``async def`` functions):
  ``COUNT = max_concurrency - held``, every held task that is not a ``def`` counting against
  the async slots.

A task that cannot start at once (a ``def`` read in an async-shaped read while the workers
are busy) waits inside the agent and counts as held. The agent never holds more than
``workers + prefetch + max_concurrency`` tasks, and a task counts as held until its stream entry is
acknowledged (or handed back), so ``XPENDING`` for this consumer never exceeds what the rule
allows. When nothing may be read, the loop waits for a completion instead of reading.

**Delivery.** Execution is at-least-once. A task is acknowledged only with its outcome; one
read but never settled (the agent was killed) stays pending in the group, and once idle for
``lease_ms`` it is claimed by a live agent and started again, its attempt counted; a start
past ``max_attempts`` fails the task with ``WorkerLost`` instead. A task whose hash is
already terminal when read (``cancelled`` while queued) is acknowledged and not run.

**Stopping a task.** A cancel notice, a walltime and a drain all stop a running task the
same way: its asyncio task is cancelled, which cancels an ``async def`` function and makes
the process engine kill and replace the worker running a ``def`` one. A cancelled task ends
``cancelled``; one past its walltime ends ``failed`` with ``WalltimeExceeded``.

**Stopping the agent** (:meth:`Agent.stop`, SIGTERM with :func:`run_agent`): it reads
nothing more, hands back at once the tasks still waiting for a slot, gives running tasks
``drain_grace_s`` to finish, then stops the rest and hands them back too. A task handed back
is ``waiting-for-ep`` again with its attempt not counted, and its entry is re-added to the
stream, so any agent reading it gets the task at once, not after a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import redis.asyncio as aioredis

from endpoint_agent import capture
from endpoint_agent.engines import Engine, make_engine
from endpoint_agent.functions import FunctionCatalog, FunctionInfo
from endpoint_agent.results import Completion, ResultWriter
from endpoint_agent.settings import AgentSettings
from endpoint_agent.worker import (
    WALLTIME_EXCEEDED,
    WORKER_LOST,
    Call,
    Limits,
    Outcome,
    describe,
    run_coroutine,
)
from sdk.errors import DeserializationError
from sdk.keys import Keys
from sdk.messages import ExceptionRecord, error_record
from service_common.redis_client import connect_redis, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage, retry, wait_or_stop
from service_common.tasks.cancels import CancelListener
from service_common.tasks.heartbeat import Heartbeat, Status, package_version
from service_common.tasks.leases import LeaseKeeper
from service_common.tasks.stream import Start, TaskEntry, TaskStream, start_stamp

log = logging.getLogger(__name__)


class _Kind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    OTHER = "other"  # skipped, or failed before it could run


class _Stop(enum.Enum):
    """Why the agent cancelled a task's asyncio task."""

    CANCEL = "cancel"  # its owner cancelled it: it ends cancelled
    HAND_BACK = "hand back"  # the agent is stopping: it goes back to the stream


@dataclass(slots=True, eq=False)
class _Held:
    """One entry read and not yet settled."""

    entry: TaskEntry
    kind: _Kind = _Kind.OTHER
    attempt: int = 0
    task: asyncio.Task[None] | None = None
    stop: _Stop | None = None
    running: bool = False
    completed: bool = False


@dataclass(slots=True)
class _Runtime:
    """What ``async with Agent(...)`` opens and closes."""

    redis: aioredis.Redis
    stream: TaskStream
    catalog: FunctionCatalog
    writer: ResultWriter
    heartbeat: Heartbeat
    leases: LeaseKeeper
    cancels: CancelListener
    engine: Engine
    sync_slots: asyncio.Semaphore
    async_slots: asyncio.Semaphore
    loop: asyncio.AbstractEventLoop
    version: str


class Agent:
    """Serves one endpoint. Open it with ``async with``; then :meth:`run` it."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._keys = Keys(settings.key_prefix)
        self._limits = Limits(
            max_result_bytes=settings.max_result_bytes,
            max_output_chars=settings.max_output_chars,
        )
        self._rt: _Runtime | None = None
        self._held: dict[str, _Held] = {}  # by entry id
        self._by_task: dict[str, _Held] = {}  # started tasks, by task id
        self._held_sync = 0
        self._held_async = 0
        self._running = 0
        self._async_shaped = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._returned: list[_Held] = []
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._outage = Outage("Redis", logger=log)
        self._stop_requested = False
        self._draining = False
        self._in_run = False
        self._next_claim = 0.0

    # -- resources ---------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        s = self.settings
        redis = connect_redis(s.redis_url)
        stream = TaskStream(redis, self._keys, s.endpoint_id, s.consumer)
        try:
            engine = make_engine(s)
        except BaseException:
            await redis.aclose()
            raise
        self._rt = _Runtime(
            redis=redis,
            stream=stream,
            catalog=FunctionCatalog(
                stream, allowed=s.allowed_strategies, allowed_functions=s.allowed_functions
            ),
            writer=ResultWriter(
                redis,
                self._keys,
                s.endpoint_id,
                agent=s.consumer,
                result_ttl_s=s.result_ttl_s,
                on_written=self._settled,
                outage=self._outage,
            ),
            heartbeat=Heartbeat(
                redis,
                self._keys,
                s.endpoint_id,
                interval_s=s.heartbeat_s,
                status=self.status,
                outage=self._outage,
            ),
            leases=LeaseKeeper(
                stream, interval_s=s.lease_ms / 3000, held=self._held_ids, outage=self._outage
            ),
            cancels=CancelListener(
                redis, self._keys, s.endpoint_id, on_cancel=self.cancel, outage=self._outage
            ),
            engine=engine,
            sync_slots=asyncio.Semaphore(s.workers),
            async_slots=asyncio.Semaphore(s.max_concurrency),
            loop=asyncio.get_running_loop(),
            version=package_version(),
        )
        capture.install()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        rt, self._rt = self._runtime, None
        try:
            # Only left over when run() was cancelled or failed: their entries stay pending
            # and are claimed again once their lease lapses.
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            rt.writer.give_up()  # one try each; never wait here for Redis to come back
            await rt.writer.drain()
        finally:
            capture.uninstall()
            try:
                await rt.engine.aclose()
            finally:
                await rt.redis.aclose()

    @property
    def _runtime(self) -> _Runtime:
        if self._rt is None:
            raise RuntimeError("use the agent inside `async with Agent(settings) as agent:`")
        return self._rt

    # -- introspection -----------------------------------------------------------------

    @property
    def held(self) -> int:
        """Tasks read from the stream and not yet acknowledged (or handed back)."""
        return len(self._held)

    @property
    def running(self) -> int:
        """Tasks executing right now (in a worker or in the event loop)."""
        return self._running

    def status(self) -> Status:
        """What the heartbeat reports."""
        s = self.settings
        return Status(
            agent=s.consumer,
            host=socket.gethostname(),
            version=self._runtime.version,
            engine=s.engine,
            workers=s.workers,
            max_concurrency=s.max_concurrency,
            capacity=s.capacity,
            running=self._running,
            held=len(self._held),
            accelerators=",".join(s.accelerators),
            draining=int(self._draining),
            heartbeat_at=time.time(),
        )

    def _held_ids(self) -> list[str]:
        return list(self._held)

    # -- control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return: it reads nothing more, lets running tasks finish within
        ``drain_grace_s`` and hands the others back (see the module docstring).

        Safe to call from any thread and from a signal handler. A ``run`` blocked on Redis
        notices within ``block_ms``."""
        self._stop_requested = True
        rt = self._rt
        if rt is None or rt.loop.is_closed():
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is rt.loop:
            self._signal_stop()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                rt.loop.call_soon_threadsafe(self._signal_stop)

    def _signal_stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def cancel(self, task_id: str) -> bool:
        """Stop the task ``task_id`` if this agent holds it; it ends ``cancelled``.

        Called for each cancel notice of the endpoint (from the event loop). A task whose
        outcome is already being written is not affected. True when the task was ours."""
        held = self._by_task.get(task_id)
        if held is None or held.completed:
            return False
        log.info("cancelling task %s", task_id)
        self._stop_task(held, _Stop.CANCEL)
        return True

    def _stop_task(self, held: _Held, why: _Stop) -> None:
        if held.stop is None:
            held.stop = why
        if held.task is not None:
            held.task.cancel()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, *, burst: bool = False) -> None:
        """Serve the endpoint until :meth:`stop`; with ``burst`` also return once the stream
        has nothing left for this agent (nothing new, nothing claimable) and nothing it
        read is still unsettled.

        Every task read is run (or skipped, if already terminal) and its outcome written
        before ``run`` returns normally, except tasks handed back by a stop.

        Redis going away (a restart, a failover) never ends ``run``: every step that needs
        Redis waits it out with the shared backoff (:mod:`service_common.retry`) and the
        outage is logged once when it starts and once when it ends. Tasks already read keep
        running meanwhile and their outcomes are written once Redis is back (see
        :mod:`endpoint_agent.results`). A stop during an outage leaves what could not be
        written or handed back pending in the group: it runs again after its lease."""
        rt = self._runtime
        if self._in_run:
            raise RuntimeError("Agent.run() is already running")
        self._in_run = True
        self._draining = False
        if self._stop_requested:
            self._stop_event.set()
        else:
            self._stop_event.clear()
        background: list[asyncio.Task[None]] = []
        stopped = asyncio.Event()
        listening = False
        try:
            try:
                await self._until_redis(rt.stream.ensure_group)
                await self._until_redis(rt.cancels.start)
                listening = True
                await self._until_redis(rt.heartbeat.beat)
            except Exception as exc:
                if not (self._stop_requested and redis_unavailable(exc)):
                    raise
            background.append(
                asyncio.create_task(rt.heartbeat.run(stopped), name="fxbroker-heartbeat")
            )
            background.append(asyncio.create_task(rt.leases.run(stopped), name="fxbroker-leases"))
            self._next_claim = 0.0
            failures = 0
            while not self._stop_requested:
                try:
                    if not await self._step(burst):
                        break
                except Exception as exc:
                    if not redis_unavailable(exc):
                        raise
                    self._outage.failed(exc)
                    failures += 1
                    await wait_or_stop(DEFAULT_BACKOFF.delay_s(failures), self._stop_event)
                    continue
                failures = 0
            await self._drain()
        finally:
            # Stopped, not cancelled: cancelling a Redis command in flight can leave the
            # task running (and its connection in an unknown state).
            stopped.set()
            if listening:
                await rt.cancels.stop()
            try:
                await asyncio.gather(*background)
            except asyncio.CancelledError:
                for task in background:
                    task.cancel()
                raise
            finally:
                self._in_run = False
                self._stop_requested = False

    async def _until_redis(self, op: Callable[[], Awaitable[None]]) -> None:
        """``op()``, waiting out a Redis outage; raises the last error if stopped meanwhile."""
        await retry(op, transient=redis_unavailable, outage=self._outage, stop=self._stop_event)

    async def _step(self, burst: bool) -> bool:
        """One round of the loop: claim, or read and dispatch, or wait for a slot. False
        when a ``burst`` run is done. Raises what Redis raised (the loop waits it out)."""
        rt = self._runtime
        s = self.settings
        count = self._read_count()
        if count == 0:
            await self._wait_for_change()
            return True
        if time.monotonic() >= self._next_claim:
            claimed = await rt.stream.claim(count, min_idle_ms=s.lease_ms)
            self._outage.recovered()
            self._next_claim = time.monotonic() + s.lease_ms / 4000
            # After an outage this agent's own entries may look idle: they are still its
            # own (it holds them), so they are not started a second time.
            claimed = [entry for entry in claimed if entry.entry_id not in self._held]
            if claimed:
                log.info("claimed %d tasks from lost agents", len(claimed))
                await self._dispatch(claimed)
                return True
        block_ms = None
        if not burst:
            until_claim_ms = int((self._next_claim - time.monotonic()) * 1000)
            block_ms = max(1, min(s.block_ms, until_claim_ms))
        entries = await rt.stream.read(count, block_ms=block_ms)
        self._outage.recovered()
        if entries:
            await self._dispatch(entries)
        elif burst:
            if not self._held:
                return False
            await self._wait_for_change()
        return True

    def _read_count(self) -> int:
        """How many entries the next read asks for (see the module docstring)."""
        s = self.settings
        held = len(self._held)
        if self._async_shaped:
            want = s.max_concurrency - (held - self._held_sync)
        else:
            want = s.workers + s.prefetch - (held - self._held_async)
        return max(0, min(want, s.capacity - held))

    async def _wait_for_change(self) -> None:
        """Wait until a completion is written or a stop is requested."""
        self._wake.clear()
        await self._wake.wait()

    async def _drain(self) -> None:
        """Stop: hand back what waits for a slot, give running tasks the grace period,
        hand back the rest, and write everything that finished."""
        rt = self._runtime
        stopping = self._stop_requested
        if stopping:
            self._draining = True
            try:
                await rt.heartbeat.beat()  # operators see the agent draining
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
        for held in list(self._held.values()):
            if held.task is not None and not held.running and not held.task.done():
                self._stop_task(held, _Stop.HAND_BACK)
        running = {h.task for h in self._held.values() if h.task is not None and not h.task.done()}
        if running:
            log.info("waiting up to %s s for %d running tasks", self.settings.drain_grace_s,
                     len(running))  # fmt: skip
            await asyncio.wait(running, timeout=self.settings.drain_grace_s)
        for held in list(self._held.values()):
            if held.task is not None and not held.task.done():
                self._stop_task(held, _Stop.HAND_BACK)
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        await self._hand_back()
        if stopping:
            # Outcomes still waiting for Redis get one more grace period, then stay pending.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.writer.drain(), self.settings.drain_grace_s)
            rt.writer.give_up()
        await rt.writer.drain()

    async def _hand_back(self) -> None:
        returned, self._returned = self._returned, []
        if not returned:
            return
        try:
            count = await self._runtime.stream.hand_back([(h.entry, h.attempt) for h in returned])
            log.info("handed %d tasks back to the stream", count)
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.warning(
                "could not hand %d tasks back while Redis is away (%s); they run again after "
                "their lease",
                len(returned),
                exc,
            )
        for held in returned:
            self._release(held)
        self._wake.set()

    # -- dispatch and execution --------------------------------------------------------

    async def _dispatch(self, entries: Sequence[TaskEntry]) -> None:
        rt = self._runtime
        s = self.settings
        batch = [_Held(entry) for entry in entries]
        for held in batch:
            self._held[held.entry.entry_id] = held
        # Starting the tasks and resolving their functions are independent round trips:
        # overlapped, a read costs one Redis round trip less before its tasks run. Both are
        # safe to retry (the start is named by its stamp), so a Redis outage is waited out.
        started_at = start_stamp()

        async def start_and_resolve() -> tuple[list[Start], _Functions]:
            return await asyncio.gather(
                rt.stream.start(entries, started_at=started_at),
                rt.catalog.resolve(entry.function_id for entry in entries),
            )

        try:
            starts, functions = await retry(
                start_and_resolve,
                transient=redis_unavailable,
                outage=self._outage,
                stop=self._stop_event,
            )
        except Exception as exc:
            for held in batch:
                self._release(held)
            if not redis_unavailable(exc):
                raise
            log.warning(
                "stopping while Redis is away: %d tasks read but not started stay pending "
                "and run again after their lease",
                len(batch),
            )
            return
        to_run: list[_Held] = []
        for held, start in zip(batch, starts, strict=True):
            if not start.run:
                log.debug("task %s is already settled; not running it", held.entry.task_id)
                held.completed = True
                rt.writer.add(
                    Completion(
                        held.entry.entry_id,
                        held.entry.task_id,
                        held.entry.task_group_id,
                        None,
                        pending_notice=start.pending_notice,
                    )
                )
                continue
            held.attempt = start.attempt
            self._by_task[held.entry.task_id] = held
            if start.attempt > s.max_attempts:
                self._complete(held, Outcome.failure(_worker_lost(start.attempt, s.max_attempts)))
            else:
                to_run.append(held)
        saw_sync = saw_async = False
        for held in to_run:
            found = functions[held.entry.function_id]
            if held.stop is _Stop.CANCEL:
                self._complete(held, Outcome.cancelled())
                continue
            if not isinstance(found, FunctionInfo):
                self._complete(held, Outcome.failure(found))
                continue
            try:
                walltime_s = self._walltime_s(held.entry)
            except ValueError as exc:
                error = DeserializationError(f"the task's {exc}")
                self._complete(held, Outcome.failure(describe(error)))
                continue
            if found.is_async:
                saw_async = True
                held.kind = _Kind.ASYNC
                self._held_async += 1
            else:
                saw_sync = True
                held.kind = _Kind.SYNC
                self._held_sync += 1
            task = asyncio.create_task(
                self._execute(held, found, walltime_s), name=f"task-{held.entry.task_id}"
            )
            held.task = task
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if saw_sync:
            self._async_shaped = False
        elif saw_async:
            self._async_shaped = True

    def _walltime_s(self, entry: TaskEntry) -> float | None:
        """The tighter of the endpoint's walltime and the task's own (``None``: none)."""
        limits = [w for w in (self.settings.walltime_s, entry.task_walltime_s()) if w is not None]
        return min(limits) if limits else None

    async def _execute(self, held: _Held, info: FunctionInfo, walltime_s: float | None) -> None:
        rt = self._runtime
        allowed = self.settings.allowed_strategies
        slots = rt.async_slots if info.is_async else rt.sync_slots
        try:
            async with slots:
                self._running += 1
                held.running = True
                try:
                    if info.is_async:
                        async with asyncio.timeout(walltime_s):
                            outcome = await run_coroutine(
                                info.fn, held.entry.payload, allowed=allowed, limits=self._limits
                            )
                    else:
                        call = Call(
                            info.function_id, info.code, held.entry.payload, allowed, self._limits
                        )
                        outcome = await rt.engine.run(call, walltime_s=walltime_s)
                except TimeoutError:
                    outcome = Outcome.failure(
                        error_record(
                            WALLTIME_EXCEEDED,
                            f"the task ran past its walltime of {walltime_s:g} s and was stopped",
                        )
                    )
                finally:
                    self._running -= 1
                    held.running = False
        except asyncio.CancelledError:
            if held.stop is None:
                raise  # the agent itself is being torn down
        except Exception as exc:  # a fault of the engine, not of the task's code
            log.exception("running task %s failed inside the agent", held.entry.task_id)
            outcome = Outcome.failure(describe(exc))
        if held.stop is _Stop.HAND_BACK:
            self._returned.append(held)
        elif held.stop is _Stop.CANCEL:
            self._complete(held, Outcome.cancelled())
        else:
            self._complete(held, outcome)

    def _complete(self, held: _Held, outcome: Outcome) -> None:
        if held.completed:
            return
        held.completed = True
        entry = held.entry
        self._runtime.writer.add(
            Completion(entry.entry_id, entry.task_id, entry.task_group_id, outcome, held.attempt)
        )

    def _settled(self, batch: Sequence[Completion]) -> None:
        """The writer is done with ``batch``: free the slots its tasks held."""
        for completion in batch:
            held = self._held.get(completion.entry_id)
            if held is not None:
                self._release(held)
        self._wake.set()

    def _release(self, held: _Held) -> None:
        if self._held.pop(held.entry.entry_id, None) is None:
            return
        if self._by_task.get(held.entry.task_id) is held:
            del self._by_task[held.entry.task_id]
        if held.kind is _Kind.SYNC:
            self._held_sync -= 1
        elif held.kind is _Kind.ASYNC:
            self._held_async -= 1


_Functions = dict[str, FunctionInfo | ExceptionRecord]


def _worker_lost(attempt: int, max_attempts: int) -> ExceptionRecord:
    return error_record(
        WORKER_LOST,
        f"the agents running this task were lost {attempt - 1} times (max_attempts is "
        f"{max_attempts}); it is not started again",
    )


async def run_agent(settings: AgentSettings, *, handle_signals: bool = True) -> None:
    """Run an agent until SIGINT or SIGTERM (when ``handle_signals``), then stop gracefully
    (:meth:`Agent.stop`): running tasks get ``drain_grace_s`` to finish, the rest go back to
    the stream for another agent."""
    async with Agent(settings) as agent:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, agent.stop)
        log.info(
            "agent %s serving endpoint %s (%s engine, %d workers, %d async slots)",
            settings.consumer,
            settings.endpoint_id,
            settings.engine,
            settings.workers,
            settings.max_concurrency,
        )
        try:
            await agent.run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
