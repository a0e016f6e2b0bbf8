"""The endpoint agent: read tasks of one endpoint, run them, write their outcomes.

::

    async with Agent(settings) as agent:
        await agent.run()            # until agent.stop(); run(burst=True) drains and returns

One loop reads the endpoint's stream through the ``agents`` consumer group, starts the tasks
it read (:mod:`endpoint_agent.stream`), resolves their functions
(:mod:`endpoint_agent.functions`), runs ``async def`` functions in this event loop and
``def`` functions in the engine's workers (:mod:`endpoint_agent.engines`), and hands each
outcome to the batched writer (:mod:`endpoint_agent.results`).

**How many entries one read asks for.** The agent cannot know a task's kind before reading
it, so it reads as if the next tasks were like the last ones:

* *sync-shaped* (the initial shape, and after any read that held a ``def`` function):
  ``COUNT = workers - held``, every held task that is not a running ``async def`` counting
  against the workers;
* *async-shaped* (after a read that held only ``async def`` functions):
  ``COUNT = max_concurrency - held``, every held task that is not a ``def`` counting against
  the async slots.

A task that cannot start at once (a ``def`` read in an async-shaped read while the workers
are busy) waits inside the agent and counts as held. The agent never holds more than
``workers + max_concurrency`` tasks, and a task counts as held until its stream entry is
acknowledged, so ``XPENDING`` for this consumer never exceeds what the rule allows. When
nothing may be read, the loop waits for a completion instead of reading.

**Delivery.** A task is acknowledged only with its outcome; one read but never settled
(the agent was killed) stays pending in the group for redelivery. A task whose hash is
already terminal when read (``cancelled`` while queued) is acknowledged and not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import redis.asyncio as aioredis

from endpoint_agent.engines import Engine, make_engine
from endpoint_agent.functions import FunctionCatalog, FunctionInfo
from endpoint_agent.heartbeat import Heartbeat, Status, package_version
from endpoint_agent.results import Completion, ResultWriter
from endpoint_agent.settings import AgentSettings
from endpoint_agent.stream import TaskEntry, TaskStream
from endpoint_agent.worker import Call, Outcome, describe, run_coroutine
from sdk.keys import Keys

log = logging.getLogger(__name__)


class _Kind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    OTHER = "other"  # skipped, or failed before it could run


@dataclass(slots=True)
class _Runtime:
    """What ``async with Agent(...)`` opens and closes."""

    redis: aioredis.Redis
    stream: TaskStream
    catalog: FunctionCatalog
    writer: ResultWriter
    heartbeat: Heartbeat
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
        self._rt: _Runtime | None = None
        self._kinds: dict[str, _Kind] = {}
        self._held = 0
        self._held_sync = 0
        self._held_async = 0
        self._running = 0
        self._async_shaped = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._in_run = False

    # -- resources ---------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        s = self.settings
        redis = aioredis.Redis.from_url(s.redis_url, decode_responses=True)
        stream = TaskStream(redis, self._keys, s.endpoint_id, s.consumer)
        self._rt = _Runtime(
            redis=redis,
            stream=stream,
            catalog=FunctionCatalog(stream, allowed=s.allowed_strategies),
            writer=ResultWriter(
                redis,
                self._keys,
                s.endpoint_id,
                result_ttl_s=s.result_ttl_s,
                on_written=self._settled,
            ),
            heartbeat=Heartbeat(
                redis, self._keys, s.endpoint_id, interval_s=s.heartbeat_s, status=self.status
            ),
            engine=make_engine(s),
            sync_slots=asyncio.Semaphore(s.workers),
            async_slots=asyncio.Semaphore(s.max_concurrency),
            loop=asyncio.get_running_loop(),
            version=package_version(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        rt, self._rt = self._runtime, None
        try:
            # Only left over when run() was cancelled or failed: their entries stay pending.
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            await rt.writer.drain()
        finally:
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
        """Tasks read from the stream and not yet acknowledged."""
        return self._held

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
            held=self._held,
            heartbeat_at=time.time(),
        )

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return once the tasks it holds have finished and been written.

        Safe to call from any thread and from a signal handler. A ``run`` blocked on Redis
        notices within ``block_ms``; tasks not yet read stay on the stream."""
        self._stop_requested = True
        rt = self._rt
        if rt is None or rt.loop.is_closed():
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is rt.loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                rt.loop.call_soon_threadsafe(self._wake.set)

    async def run(self, *, burst: bool = False) -> None:
        """Serve the endpoint until :meth:`stop`; with ``burst`` also return once the stream
        has nothing left for this agent and nothing it read is still unsettled.

        Every task read is run (or skipped, if already terminal) and its outcome written
        before ``run`` returns normally."""
        rt = self._runtime
        if self._in_run:
            raise RuntimeError("Agent.run() is already running")
        self._in_run = True
        block_ms = None if burst else self.settings.block_ms
        heartbeat: asyncio.Task[None] | None = None
        heartbeat_stop = asyncio.Event()
        try:
            await rt.stream.ensure_group()
            await rt.heartbeat.beat()
            heartbeat = asyncio.create_task(
                rt.heartbeat.run(heartbeat_stop), name="fxbroker-heartbeat"
            )
            while not self._stop_requested:
                count = self._read_count()
                if count == 0:
                    await self._wait_for_change()
                    continue
                entries = await rt.stream.read(count, block_ms=block_ms)
                if entries:
                    await self._dispatch(entries)
                elif burst:
                    if self._held == 0:
                        break
                    await self._wait_for_change()
            await self._drain()
        finally:
            if heartbeat is not None:
                # Stopped, not cancelled: cancelling a Redis command in flight can leave the
                # task running (and its connection in an unknown state).
                heartbeat_stop.set()
                try:
                    await heartbeat
                except asyncio.CancelledError:
                    heartbeat.cancel()
                    raise
            self._in_run = False
            self._stop_requested = False

    def _read_count(self) -> int:
        """How many entries the next read asks for (see the module docstring)."""
        s = self.settings
        if self._async_shaped:
            want = s.max_concurrency - (self._held - self._held_sync)
        else:
            want = s.workers - (self._held - self._held_async)
        return max(0, min(want, s.capacity - self._held))

    async def _wait_for_change(self) -> None:
        """Wait until a completion is written or a stop is requested."""
        self._wake.clear()
        await self._wake.wait()

    async def _drain(self) -> None:
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        await self._runtime.writer.drain()

    async def _dispatch(self, entries: Sequence[TaskEntry]) -> None:
        rt = self._runtime
        self._held += len(entries)
        for entry in entries:
            self._kinds[entry.entry_id] = _Kind.OTHER
        started = await rt.stream.start(entries)
        to_run = [entry for entry, ok in zip(entries, started, strict=True) if ok]
        for entry, ok in zip(entries, started, strict=True):
            if not ok:
                log.debug("task %s is already settled; not running it", entry.task_id)
                rt.writer.add(Completion(entry.entry_id, entry.task_id, entry.task_group_id, None))
        functions = await rt.catalog.resolve(entry.function_id for entry in to_run)
        saw_sync = saw_async = False
        for entry in to_run:
            found = functions[entry.function_id]
            if not isinstance(found, FunctionInfo):
                self._complete(entry, Outcome.failure(found))
                continue
            if found.is_async:
                saw_async = True
                self._kinds[entry.entry_id] = _Kind.ASYNC
                self._held_async += 1
            else:
                saw_sync = True
                self._kinds[entry.entry_id] = _Kind.SYNC
                self._held_sync += 1
            task = asyncio.create_task(self._execute(entry, found), name=f"task-{entry.task_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if saw_sync:
            self._async_shaped = False
        elif saw_async:
            self._async_shaped = True

    async def _execute(self, entry: TaskEntry, info: FunctionInfo) -> None:
        rt = self._runtime
        allowed = self.settings.allowed_strategies
        slots = rt.async_slots if info.is_async else rt.sync_slots
        try:
            async with slots:
                self._running += 1
                try:
                    if info.is_async:
                        outcome = await run_coroutine(info.fn, entry.payload, allowed=allowed)
                    else:
                        call = Call(info.function_id, info.code, entry.payload, allowed)
                        outcome = await rt.engine.run(call)
                finally:
                    self._running -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault of the engine, not of the task's code
            log.exception("running task %s failed inside the agent", entry.task_id)
            outcome = Outcome.failure(describe(exc))
        self._complete(entry, outcome)

    def _complete(self, entry: TaskEntry, outcome: Outcome) -> None:
        self._runtime.writer.add(
            Completion(entry.entry_id, entry.task_id, entry.task_group_id, outcome)
        )

    def _settled(self, batch: Sequence[Completion]) -> None:
        """The writer is done with ``batch``: free the slots its tasks held."""
        for completion in batch:
            kind = self._kinds.pop(completion.entry_id, _Kind.OTHER)
            self._held -= 1
            if kind is _Kind.SYNC:
                self._held_sync -= 1
            elif kind is _Kind.ASYNC:
                self._held_async -= 1
        self._wake.set()


async def run_agent(settings: AgentSettings, *, handle_signals: bool = True) -> None:
    """Run an agent until SIGINT or SIGTERM (when ``handle_signals``), then stop gracefully:
    tasks already read finish and are written, tasks still queued stay on the stream."""
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
