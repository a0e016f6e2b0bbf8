"""The endpoint agent: receive tasks of one endpoint, run them, report their outcomes.

::

    async with Agent(settings) as agent:
        await agent.run()            # until agent.stop(); run(burst=True) drains and returns

One loop asks its transport (:mod:`endpoint_agent.transport`) for windows of tasks: the
endpoint gateway, over one WebSocket authenticated by the endpoint's credential
(:mod:`endpoint_agent.gateway`); the agent never sees Redis. It runs ``async def`` functions
in this event loop and ``def`` functions in the engine's workers
(:mod:`endpoint_agent.engines`) and hands each outcome back to the transport, which reports
outcomes in batches. "Read" is "received in a window" (the agent grants credit for as many
as it asks), "acknowledged" is "settled".

**How many tasks one read asks for.** The agent cannot know a task's kind before reading
it, so it reads as if the next tasks were like the last ones:

* *sync-shaped* (the initial shape, and after any read that held a ``def`` function):
  ``COUNT = workers + prefetch + lookahead - held``, every held task that is not a running
  ``async def`` counting against the workers (``prefetch`` is 0 unless configured;
  ``lookahead`` is what the engine can usefully queue on its workers, learned from observed
  call times: 0 while calls take longer than a few milliseconds, so the gateway keeps what
  busy workers cannot start for another agent, and up to ``LOOKAHEAD_MAX`` per worker for
  quick calls, see :mod:`endpoint_agent.processes`);
* *async-shaped* (after a read that held only ``async def`` functions):
  ``COUNT = max_concurrency - held``, every held task that is not a ``def`` counting against
  the async slots.

A task that cannot start at once (a ``def`` read in an async-shaped read while the workers
are busy) waits inside the agent and counts as held. The agent never holds more than
``workers + prefetch + lookahead + max_concurrency`` tasks, and a task counts as held until
its outcome is reported (or it is handed back), so the gateway never has more of this
agent's tasks in hand than the rule allows. When nothing may be read, the loop waits for a
completion instead, after telling the transport so (:meth:`~endpoint_agent.transport.
Transport.want`): credit granted while the look-ahead was deep may then be withdrawn.

**Delivery.** Execution is at-least-once. A task is settled only with its outcome; the
gateway keeps the lease of every task it handed this agent while the agent's connection
lives. One never settled (the agent was killed) is claimed again once its lease lapses and
started again, its attempt counted; a start past the gateway's ``max_attempts`` fails the
task with ``WorkerLost`` instead. A task already terminal when read (``cancelled`` while
queued) is settled by the gateway and never sent.

**Running a task.** An ``async def`` function runs in its own asyncio task; a ``def`` one is
submitted to the engine (:mod:`endpoint_agent.engines`), which queues it, runs it in
batches and calls back with its outcome: no asyncio task or thread hop per ``def`` task.

**Stopping a task.** A cancel notice, a walltime and a drain all stop a running task: an
``async def`` one by cancelling its asyncio task, a ``def`` one by taking it back from the
engine (:meth:`~endpoint_agent.engines.Engine.stop`: the process engine kills and replaces
the worker running it, or skips it if it has not started). A cancelled task ends
``cancelled``; one past its walltime ends ``failed`` with ``WalltimeExceeded``.

**Stopping the agent** (:meth:`Agent.stop`, SIGTERM with :func:`run_agent`): it reads
nothing more, hands back at once the tasks still waiting for a slot, gives running tasks
``drain_grace_s`` to finish, then stops the rest and hands them back too. A task handed back
is ``waiting-for-ep`` again with its attempt not counted, and the gateway re-adds its entry
to the stream, so any agent gets the task at once, not after a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType

from endpoint_agent import capture
from endpoint_agent.engines import Engine, make_engine
from endpoint_agent.functions import FunctionInfo
from endpoint_agent.settings import AgentSettings
from endpoint_agent.transport import Received, Transport
from endpoint_agent.worker import (
    Call,
    Limits,
    Outcome,
    describe,
    run_coroutine,
    walltime_exceeded,
)
from service_common.retry import DEFAULT_BACKOFF, Outage, wait_or_stop

log = logging.getLogger(__name__)


class _Kind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    OTHER = "other"  # skipped, or failed before it could run


class _Stop(enum.Enum):
    """Why the agent stopped a task before its end."""

    CANCEL = "cancel"  # its owner cancelled it: it ends cancelled
    HAND_BACK = "hand back"  # the agent is stopping: it goes back to the stream
    LOST = "lost"  # it is another agent's now: it ends with no outcome


@dataclass(slots=True, eq=False)
class _Held:
    """One task received and not yet settled."""

    work: Received
    kind: _Kind = _Kind.OTHER
    task: asyncio.Task[None] | None = None  # an async def function's
    in_engine: bool = False  # a def function's, submitted and not yet done
    stop: _Stop | None = None
    running: bool = False
    completed: bool = False


@dataclass(slots=True)
class _Runtime:
    """What ``async with Agent(...)`` opens and closes."""

    transport: Transport
    engine: Engine
    async_slots: asyncio.Semaphore
    loop: asyncio.AbstractEventLoop


def make_transport(settings: AgentSettings, host: Agent, outage: Outage) -> Transport:
    """The endpoint gateway, over one WebSocket (imported here: ``websockets`` loads only
    in the agent's own process, not in its workers)."""
    from endpoint_agent.gateway import GatewayTransport

    return GatewayTransport(settings, host, outage=outage)


class Agent:
    """Serves one endpoint. Open it with ``async with``; then :meth:`run` it."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._limits = Limits(
            max_result_bytes=settings.max_result_bytes,
            max_output_chars=settings.max_output_chars,
        )
        self._rt: _Runtime | None = None
        self._held: dict[str, _Held] = {}  # by key
        self._by_task: dict[str, _Held] = {}  # started tasks, by task id
        self._held_sync = 0
        self._held_async = 0
        self._running = 0
        self._async_shaped = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._returned: list[_Held] = []
        self._wake = asyncio.Event()
        self._engine_done = asyncio.Event()  # set whenever the engine reports an outcome
        self._stop_event = asyncio.Event()
        self._outage = Outage("the gateway", logger=log)
        self._stop_requested = False
        self._grace_s: float | None = None
        self._draining = False
        self._in_run = False

    # -- resources ---------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        s = self.settings
        transport = make_transport(s, self, self._outage)
        try:
            engine = make_engine(s)
        except BaseException:
            await transport.aclose()
            raise
        try:
            await transport.open()
        except BaseException:
            await engine.aclose()
            await transport.aclose()
            raise
        self._rt = _Runtime(
            transport=transport,
            engine=engine,
            async_slots=asyncio.Semaphore(s.max_concurrency),
            loop=asyncio.get_running_loop(),
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
            # Only left over when run() was cancelled or failed: their tasks stay leased
            # and run again once their lease lapses.
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
        finally:
            capture.uninstall()
            try:
                await rt.engine.aclose()
            finally:
                await rt.transport.aclose()

    @property
    def _runtime(self) -> _Runtime:
        if self._rt is None:
            raise RuntimeError("use the agent inside `async with Agent(settings) as agent:`")
        return self._rt

    # -- introspection (also what a transport asks: endpoint_agent.transport.Host) -----

    @property
    def transport(self) -> str:
        """How this agent reaches its endpoint (``"gateway"``)."""
        return self._runtime.transport.name

    @property
    def held(self) -> int:
        """Tasks received and not yet settled (or handed back)."""
        return len(self._held)

    @property
    def connected(self) -> bool:
        """Whether the agent is connected to its gateway now."""
        return self._runtime.transport.connected

    @property
    def unanswered(self) -> int:
        """Outcomes reported and not yet answered (stored or refused) by the platform."""
        return self._runtime.transport.held_outcomes

    @property
    def running(self) -> int:
        """Tasks executing right now (in a worker or in the event loop)."""
        rt = self._rt
        return self._running + (rt.engine.running if rt is not None else 0)

    def counts(self) -> tuple[int, int, bool]:
        return len(self._held), self.running, self._draining

    def held_keys(self) -> list[str]:
        return list(self._held)

    def unfinished(self) -> list[Received]:
        return [h.work for h in self._held.values() if not h.completed]

    # -- control -----------------------------------------------------------------------

    def stop(self, grace_s: float | None = None) -> None:
        """Make :meth:`run` return: it receives nothing more, lets running tasks finish
        within ``grace_s`` (default ``drain_grace_s``) and hands the others back (see the
        module docstring).

        Safe to call from any thread and from a signal handler. A ``run`` waiting for a
        window notices within ``block_ms``."""
        self._stop_requested = True
        if grace_s is not None:
            self._grace_s = grace_s
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
        outcome is already being reported is not affected. True when the task was ours."""
        held = self._by_task.get(task_id)
        if held is None or held.completed:
            return False
        log.info("cancelling task %s", task_id)
        self._stop_task(held, _Stop.CANCEL)
        return True

    def forget(self, keys: Sequence[str]) -> None:
        """Stop the tasks ``keys`` name and report nothing for them: they are another
        agent's now (a reconnect came after their lease lapsed)."""
        for key in keys:
            held = self._held.get(key)
            if held is None or held.completed:
                continue
            log.warning("task %s is no longer this agent's (its lease lapsed); stopping it",
                        held.work.task_id)  # fmt: skip
            held.completed = True
            if held.task is not None and not held.task.done():
                self._stop_task(held, _Stop.LOST)
            else:
                if held.in_engine:
                    held.in_engine = False
                    self._runtime.engine.stop(held.work.key)
                self._release(held)
        self._wake.set()

    def _stop_task(self, held: _Held, why: _Stop) -> None:
        if held.stop is None or why is _Stop.LOST:
            held.stop = why
        if held.task is not None:
            held.task.cancel()
        elif held.in_engine:
            held.in_engine = False
            self._runtime.engine.stop(held.work.key)
            self._stopped(held)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, *, burst: bool = False) -> None:
        """Serve the endpoint until :meth:`stop`; with ``burst`` also return once the
        gateway says a grant found the endpoint's stream empty and nothing it received is
        still unsettled.

        Every task received is run (or skipped, if already terminal) and its outcome
        reported before ``run`` returns normally, except tasks handed back by a stop.

        The platform going away (a lost gateway, a Redis restart behind it) never ends
        ``run``: every step that needs it waits it out with the shared backoff
        (:mod:`service_common.retry`) and the outage is logged once when it starts and once
        when it ends. Tasks already
        received keep running meanwhile and their outcomes are reported once it is back.
        A stop during an outage leaves what could not be reported or handed back to its
        lease: it runs again once that lapses."""
        rt = self._runtime
        if self._in_run:
            raise RuntimeError("Agent.run() is already running")
        self._in_run = True
        self._draining = False
        if self._stop_requested:
            self._stop_event.set()
        else:
            self._stop_event.clear()
        stopped = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        try:
            background = await rt.transport.start(stop=self._stop_event, stopped=stopped)
            failures = 0
            while not self._stop_requested:
                try:
                    if not await self._step(burst):
                        break
                except Exception as exc:
                    if not rt.transport.transient(exc):
                        raise
                    self._outage.failed(exc)
                    failures += 1
                    await wait_or_stop(DEFAULT_BACKOFF.delay_s(failures), self._stop_event)
                    continue
                failures = 0
            await self._drain()
        finally:
            # Stopped, not cancelled: cancelling I/O in flight can leave the task running
            # (and its connection in an unknown state).
            stopped.set()
            try:
                await rt.transport.stopped()
                await asyncio.gather(*background)
            except asyncio.CancelledError:
                for task in background:
                    task.cancel()
                raise
            finally:
                self._in_run = False
                self._stop_requested = False
                self._grace_s = None

    async def _step(self, burst: bool) -> bool:
        """One round of the loop: receive a window and dispatch it, or wait for a slot.
        False when a ``burst`` run is done. Raises what the transport raised when the
        platform is away (the loop waits it out)."""
        count = self._read_count()
        if count == 0:
            await self._runtime.transport.want(0)
            await self._wait_for_change()
            return True
        received = await self._runtime.transport.receive(count, burst=burst)
        if received:
            self._dispatch(received)
        elif burst:
            if not self._held:
                return False
            await self._wait_for_change()
        return True

    def _read_count(self) -> int:
        """How many tasks the next window asks for (see the module docstring)."""
        s = self.settings
        held = len(self._held)
        lookahead = self._runtime.engine.lookahead
        if self._async_shaped:
            want = s.max_concurrency - (held - self._held_sync)
        else:
            want = s.workers + s.prefetch + lookahead - (held - self._held_async)
        return max(0, min(want, s.capacity + lookahead - held))

    @property
    def wake(self) -> asyncio.Event:
        """Set when a slot frees or a stop is requested (a transport waiting for a window
        may wait on it too)."""
        return self._wake

    async def _wait_for_change(self) -> None:
        """Wait until a completion is settled or a stop is requested."""
        self._wake.clear()
        await self._wake.wait()

    async def _drain(self) -> None:
        """Stop: hand back what waits for a slot, give running tasks the grace period,
        hand back the rest, and report everything that finished."""
        rt = self._runtime
        stopping = self._stop_requested
        grace_s = self.settings.drain_grace_s if self._grace_s is None else self._grace_s
        if stopping:
            self._draining = True
            await rt.transport.draining()
        engine = rt.engine
        cancelled: list[asyncio.Task[None]] = []
        for held in list(self._held.values()):
            if held.task is not None and not held.running and not held.task.done():
                self._stop_task(held, _Stop.HAND_BACK)
                cancelled.append(held.task)
            elif held.in_engine and not engine.started(held.work.key):
                self._stop_task(held, _Stop.HAND_BACK)
        if cancelled:  # not yet in user code: each ends at once, on the returned list
            await asyncio.wait(cancelled, timeout=grace_s)
        await self._hand_back()  # now, not after the grace: another agent can run them
        await self._wait_running(grace_s)
        for held in list(self._held.values()):
            if (held.task is not None and not held.task.done()) or held.in_engine:
                self._stop_task(held, _Stop.HAND_BACK)
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        await self._hand_back()
        await rt.transport.finish(grace_s if stopping else None)

    async def _wait_running(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the running tasks to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        logged = False
        while True:
            tasks = {
                h.task for h in self._held.values() if h.task is not None and not h.task.done()
            }
            in_engine = sum(1 for h in self._held.values() if h.in_engine)
            remaining = deadline - loop.time()
            if not (tasks or in_engine) or remaining <= 0:
                return
            if not logged:
                log.info("waiting up to %s s for %d running tasks", grace_s, len(tasks) + in_engine)
                logged = True
            self._engine_done.clear()
            waiter = asyncio.create_task(self._engine_done.wait())
            try:
                await asyncio.wait(
                    {*tasks, waiter}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()

    async def _hand_back(self) -> None:
        returned, self._returned = self._returned, []
        if not returned:
            return
        await self._runtime.transport.hand_back([h.work for h in returned])
        for held in returned:
            self._release(held)
        self._wake.set()

    # -- dispatch and execution --------------------------------------------------------

    def _dispatch(self, window: Sequence[Received]) -> None:
        rt = self._runtime
        allowed = self.settings.allowed_strategies
        saw_sync = saw_async = False
        for work in window:
            held = _Held(work)
            self._held[work.key] = held
            if work.skip:
                held.completed = True
                rt.transport.settle(work, None)
                continue
            self._by_task[work.task_id] = held
            if work.failure is not None:
                self._complete(held, Outcome.failure(work.failure))
                continue
            info = work.function
            assert info is not None, "a task to run names its function"
            if not info.is_async:
                saw_sync = True
                held.kind = _Kind.SYNC
                self._held_sync += 1
                held.in_engine = True
                limits = self._limits_for(work)
                call = Call(info.function_id, info.code, work.payload, allowed, limits)
                rt.engine.submit(
                    work.key, call, walltime_s=self._walltime_s(work), done=self._ended
                )
                continue
            saw_async = True
            held.kind = _Kind.ASYNC
            self._held_async += 1
            task = asyncio.create_task(
                self._execute(held, info, self._walltime_s(work)), name=f"task-{work.task_id}"
            )
            held.task = task
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if saw_sync:
            self._async_shaped = False
        elif saw_async:
            self._async_shaped = True

    def _limits_for(self, work: Received) -> Limits:
        """The agent's limits, with the task's own result strategies when it names some."""
        if not work.result_strategies:
            return self._limits
        return replace(self._limits, result_strategies=work.result_strategies)

    def _walltime_s(self, work: Received) -> float | None:
        """The tighter of the endpoint's walltime and the task's own (``None``: none)."""
        limits = [w for w in (self.settings.walltime_s, work.walltime_s) if w is not None]
        return min(limits) if limits else None

    def _ended(self, key: str, outcome: Outcome) -> None:
        """The engine's report of a ``def`` task's end."""
        self._engine_done.set()
        held = self._held.get(key)
        if held is None or not held.in_engine:
            return
        held.in_engine = False
        self._complete(held, outcome)

    async def _execute(self, held: _Held, info: FunctionInfo, walltime_s: float | None) -> None:
        """Run an ``async def`` task in this loop, within the async slots."""
        rt = self._runtime
        allowed = self.settings.allowed_strategies
        payload = held.work.payload
        outcome: Outcome | None = None
        try:
            async with rt.async_slots:
                self._running += 1
                held.running = True
                try:
                    async with asyncio.timeout(walltime_s):
                        outcome = await run_coroutine(
                            info.fn, payload, allowed=allowed, limits=self._limits_for(held.work)
                        )
                except TimeoutError:
                    assert walltime_s is not None
                    outcome = walltime_exceeded(walltime_s)
                finally:
                    self._running -= 1
                    held.running = False
        except asyncio.CancelledError:
            if held.stop is None:
                raise  # the agent itself is being torn down
        except Exception as exc:  # a fault of the agent, not of the task's code
            log.exception("running task %s failed inside the agent", held.work.task_id)
            outcome = Outcome.failure(describe(exc))
        self._stopped(held, outcome)

    def _stopped(self, held: _Held, outcome: Outcome | None = None) -> None:
        """Settle a task that ended (``outcome``) or was stopped (``held.stop``)."""
        if held.stop is _Stop.LOST:
            self._release(held)
            self._wake.set()
        elif held.stop is _Stop.HAND_BACK:
            self._returned.append(held)
        elif held.stop is _Stop.CANCEL:
            self._complete(held, Outcome.cancelled())
        elif outcome is not None:
            self._complete(held, outcome)

    def _complete(self, held: _Held, outcome: Outcome) -> None:
        if held.completed:
            return
        held.completed = True
        self._runtime.transport.settle(held.work, outcome)

    def settled(self, keys: Sequence[str]) -> None:
        """The transport is done with the outcomes of ``keys``: free their slots."""
        for key in keys:
            held = self._held.get(key)
            if held is not None:
                self._release(held)
        self._wake.set()

    def _release(self, held: _Held) -> None:
        if self._held.pop(held.work.key, None) is None:
            return
        if self._by_task.get(held.work.task_id) is held:
            del self._by_task[held.work.task_id]
        if held.kind is _Kind.SYNC:
            self._held_sync -= 1
        elif held.kind is _Kind.ASYNC:
            self._held_async -= 1


async def run_agent(settings: AgentSettings, *, handle_signals: bool = True) -> None:
    """Run an agent until SIGINT or SIGTERM (when ``handle_signals``), then stop gracefully
    (:meth:`Agent.stop`): running tasks get ``drain_grace_s`` to finish, the rest go back to
    the endpoint's queue for another agent."""
    async with Agent(settings) as agent:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, agent.stop)
        log.info(
            "agent %s serving endpoint %s through %s (%s engine, %d workers, %d async slots)",
            settings.consumer,
            settings.endpoint_id,
            agent.transport,
            settings.engine,
            settings.workers,
            settings.max_concurrency,
        )
        try:
            await agent.run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
