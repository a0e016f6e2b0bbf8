"""One agent's connection to the gateway: the protocol's rules (the :class:`Ledger`) kept
against Redis.

The session reads the agent's frames in order and answers them; beside it run two tasks:
the *starter* starts what the reader delivered (the start script counts the attempt and
moves each entry to the agent's own consumer, so its lease is the agent's; the code of
functions not yet sent and the endpoint's allow-list come in the same round trip) and
sends the window, and the *lease keeper* renews the lease of every delivery the ledger
lists, every ``lease_ms / 3``, while the connection lives.

Tasks that must not run are settled here and never sent: already terminal (cancelled while
queued: only acknowledged), attempt past ``max_attempts`` (``WorkerLost``), function not on
the endpoint's allow-list (``FunctionNotAllowed``), no code stored (``FunctionNotFound``), a
``walltime_s`` that does not parse (``DeserializationError``).

**Delivery ids** are ``<entry id>/<attempt>``: unique per handing (a redelivery counts
another attempt), and enough for a reconnecting agent's next session to check, against
Redis, that the task is still that agent's (:meth:`TaskStream.holding`). The agent's
consumer name in the endpoint's group is its ``hello.agent`` id, stable across reconnects.

**Credit** comes in ``credit`` frames and goes back in ``withdraw`` ones (an agent whose
look-ahead shrank): a withdraw takes only credit no read has reserved, and its ``withdrawn``
answer is sent under the same lock as the windows, so it follows every window that used
credit before it. A grant that finds the stream empty is told so, once (an empty ``tasks``
frame), never ahead of a window being started.

**Outcomes** are settled in batches (:class:`~service_common.tasks.settle.Settler`) only
for deliveries the ledger says were handed to this connection; each is answered once in a
``settled`` frame. Written outcomes are pushed to subscribers of this process
(``on_settled``) as soon as their notices are appended, before the entries are acknowledged.

**Redis outages**: every Redis step is retried with the shared backoff; the agent is sent
``UNAVAILABLE`` once per outage, windows pause (the reader waits too) and outcomes wait
unanswered. Nothing here ends the connection but the agent or a broken protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sdk.errors import DeserializationError
from sdk.messages import ExceptionRecord, error_record
from sdk.states import TaskState
from service_common.agent_protocol import (
    CLOSE_CODES,
    INTERNAL,
    UNAVAILABLE,
    UNEXPECTED_FRAME,
    Accepted,
    AgentFrame,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    GatewayFrame,
    HandBack,
    Hello,
    Ledger,
    NeedCode,
    Outcomes,
    ProtocolError,
    Status,
    Task,
    TaskOutcome,
    Tasks,
    Welcome,
    Withdraw,
    decode_agent_frame,
    encode,
)
from service_common.redis_client import redis_unavailable
from service_common.retry import retry
from service_common.tasks.heartbeat import Status as StatusRecord
from service_common.tasks.heartbeat import write_status
from service_common.tasks.leases import LeaseKeeper
from service_common.tasks.settle import NOT_OURS, WRITTEN, Completion, Settler
from service_common.tasks.stream import Lookup, Start, TaskEntry, TaskStream, start_stamp

if TYPE_CHECKING:
    from ws_service.gateway.hub import Gateway

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKER_LOST = "WorkerLost"
FUNCTION_NOT_ALLOWED = "FunctionNotAllowed"
FUNCTION_NOT_FOUND = "FunctionNotFound"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One task handed to this connection: its stream entry and the attempt it runs as."""

    entry: TaskEntry
    attempt: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """An outcome this session stored: what same-process subscribers are pushed."""

    task_group_id: str
    notice_id: str
    outcome: TaskOutcome


def delivery_id(entry_id: str, attempt: int) -> str:
    return f"{entry_id}/{attempt}"


def parse_delivery_id(value: str) -> tuple[str, int] | None:
    """``(entry id, attempt)`` of a delivery id this gateway made, else ``None``."""
    entry_id, _, attempt = value.rpartition("/")
    if not entry_id or not attempt.isdigit():
        return None
    return entry_id, int(attempt)


HELLO_TIMEOUT_S = 10.0
"""How long an authenticated connection may stay silent before its hello: a client that
never says hello does not hold a connection (and a slot of the copy) for ever."""

RECENT_FUNCTIONS = 16
"""How many of the functions a session started last are looked up with each start."""


class AgentSession:
    """Serves one agent connection for one endpoint (see the module docstring)."""

    def __init__(
        self, gateway: Gateway, connection: ServerConnection, endpoint_id: str, name: str
    ) -> None:
        self.gateway = gateway
        self.connection = connection
        self.endpoint_id = endpoint_id
        self.endpoint_name = name
        s = gateway.settings
        self.ledger = Ledger(max_frame_bytes=s.max_frame_bytes)
        self._deliveries: dict[str, Delivery] = {}
        self._recent_functions: dict[str, None] = {}  # the last functions started, oldest first
        self._inbox: list[TaskEntry] = []
        self._reserved = 0
        self._told_nothing = False  # since the agent's last grant
        self._telling: set[asyncio.Task[None]] = set()
        self._inbox_ready = asyncio.Event()
        self._window_lock = asyncio.Lock()  # a window's credit taken and its frames sent
        self._closing = False
        self.draining = False
        self.hello: Hello | None = None
        self._stream: TaskStream | None = None
        self._settler = Settler(
            gateway.redis, gateway.keys, endpoint_id, result_ttl_s=s.result_ttl_s
        )
        self._outage = gateway.redis_outage
        self._told_unavailable = False
        self._outcome_batches: list[Accepted] = []
        self._settling: asyncio.Task[None] | None = None
        self._lease_stop = asyncio.Event()

    # -- what the reader asks --------------------------------------------------------------

    @property
    def wants(self) -> int:
        if self._closing or self.draining or self.hello is None:
            return 0
        return max(0, self.ledger.credit - self._reserved)

    def deliver(self, entries: list[TaskEntry]) -> None:
        self._reserved += len(entries)
        self._inbox.extend(entries)
        self._inbox_ready.set()

    def found_nothing(self) -> None:
        """Tell the agent, once per grant, that its stream is empty: an empty ``tasks``
        frame. Not while tasks are being started for it, so the word never overtakes them
        (the next read after they are sent tells it then)."""
        if self._told_nothing or self._reserved or self._inbox:
            return
        self._told_nothing = True
        told = asyncio.get_running_loop().create_task(self.send_quietly(Tasks(())))
        self._telling.add(told)
        told.add_done_callback(self._telling.discard)

    # -- the connection --------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until the connection closes; everything it started is stopped."""
        background: list[asyncio.Task[None]] = []
        try:
            hello = await self._greet()
            if hello is None:
                return
            stream = self._stream
            assert stream is not None
            keeper = LeaseKeeper(
                stream,
                interval_s=self.gateway.settings.lease_ms / 3000,
                held=self._lease_ids,
                outage=self._outage,
            )
            background.append(asyncio.create_task(keeper.run(self._lease_stop)))
            background.append(
                asyncio.create_task(self._guard(self._starter), name="gateway-starter")
            )
            self.gateway.attach(self)
            async for message in self.connection:
                frame = decode_agent_frame(
                    message, max_frame_bytes=self.gateway.settings.max_frame_bytes
                )
                self.ledger.admit(frame)
                await self._on_frame(frame)
        except ProtocolError as exc:
            await self._fail(exc)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("serving agent of endpoint %s failed", self.endpoint_id)
            await self._fail(ProtocolError(INTERNAL, "the gateway failed; reconnect"))
        finally:
            self._closing = True
            self.gateway.detach(self)
            self._lease_stop.set()
            self._inbox_ready.set()
            if self._settling is not None:
                background.append(self._settling)
            await asyncio.gather(*background, return_exceptions=True)
            await self._return_unsent()

    async def _greet(self) -> Hello | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                message = await self.connection.recv()
        except TimeoutError:
            raise ProtocolError(
                UNEXPECTED_FRAME, f"no hello within {HELLO_TIMEOUT_S:g} s of the handshake"
            ) from None
        frame = decode_agent_frame(message, max_frame_bytes=self.gateway.settings.max_frame_bytes)
        if not isinstance(frame, Hello):
            raise ProtocolError(UNEXPECTED_FRAME, f"a {frame.TYPE} frame came before hello")
        version = self.ledger.greet(frame)
        self.hello = frame
        self._stream = TaskStream(
            self.gateway.redis, self.gateway.keys, self.endpoint_id, frame.agent
        )
        lost = await self._adopt([*frame.running, *frame.held])
        s = self.gateway.settings
        await self._send(
            Welcome(
                version=version,
                endpoint_id=self.endpoint_id,
                lease_ms=s.lease_ms,
                heartbeat_s=s.heartbeat_s,
                max_frame_bytes=s.max_frame_bytes,
                lost=tuple(lost),
            )
        )
        log.info(
            "agent %s of endpoint %s (%s) connected from %s, protocol %d",
            frame.agent,
            self.endpoint_id,
            self.endpoint_name,
            frame.host,
            version,
        )
        return frame

    async def _adopt(self, refs: Sequence[DeliveryRef]) -> list[str]:
        """Keep the deliveries of an earlier connection this agent still holds; the task
        ids of the others (``welcome.lost``)."""
        refs = list({ref.delivery_id: ref for ref in refs}.values())
        parsed = [(ref, parse_delivery_id(ref.delivery_id)) for ref in refs]
        checkable = [(ref, p) for ref, p in parsed if p is not None]
        stream = self._stream
        assert stream is not None
        found = await self._redis_step(
            lambda: stream.holding([(p[0], ref.task_id, p[1]) for ref, p in checkable])
        )
        kept: list[DeliveryRef] = []
        for (ref, p), entry in zip(checkable, found, strict=True):
            if entry is not None:
                self._deliveries[ref.delivery_id] = Delivery(entry, p[1])
                kept.append(ref)
        self.ledger.adopt(kept)
        kept_ids = {ref.delivery_id for ref in kept}
        lost = [ref.task_id for ref in refs if ref.delivery_id not in kept_ids]
        if lost:
            log.info("agent %s's tasks %s are no longer its own", self.ledger.agent, lost)
        return list(dict.fromkeys(lost))

    async def _on_frame(self, frame: AgentFrame) -> None:
        if isinstance(frame, Credit):
            self.ledger.grant(frame)
            self._told_nothing = False
            self.gateway.reader.wake(self)
        elif isinstance(frame, Withdraw):
            await self._withdraw(frame)
        elif isinstance(frame, Outcomes):
            # Accepted in frame order, so a credit frame that follows finds these slots
            # free in the ledger (credit never counts a task whose outcome came first).
            self._outcome_batches.append(self.ledger.accept(frame))
            if self._settling is None or self._settling.done():
                self._settling = asyncio.create_task(
                    self._guard(self._settle), name="gateway-settle"
                )
        elif isinstance(frame, Status):
            await self._record(frame)
        elif isinstance(frame, HandBack):
            await self._hand_back(frame)
        elif isinstance(frame, NeedCode):
            await self._need_code(frame)

    async def _withdraw(self, frame: Withdraw) -> None:
        """Take back credit the agent no longer wants, never what a read in flight reserved
        (those tasks are coming); the reader's :attr:`wants` drops with it, and a wait of the
        reader's that asked for more is cut short. The answer goes out after any window whose
        credit was taken before (the window lock), so the agent's count stays exact."""
        async with self._window_lock:
            withdrawn = self.ledger.withdraw(frame, reserved=self._reserved)
            if withdrawn.count:
                self.gateway.reader.wants_less(self)
            await self._send(withdrawn)
        if withdrawn.count:
            log.debug("agent %s withdrew %d credit", self.ledger.agent, withdrawn.count)

    async def _guard(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run a task of this session; one that fails on the gateway's side (not Redis
        being away: that is waited out) ends the connection with ``INTERNAL``, so the agent
        reconnects to a clean state."""
        try:
            await work()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("serving agent %s of endpoint %s failed", self.ledger.agent,
                          self.endpoint_id)  # fmt: skip
            await self._fail(ProtocolError(INTERNAL, "the gateway failed; reconnect"))

    async def _fail(self, exc: ProtocolError) -> None:
        """Answer a broken protocol: the error frame, then close when it is fatal."""
        log.warning("agent of endpoint %s: %s", self.endpoint_id, exc)
        with contextlib.suppress(ConnectionClosed):
            await self._send(exc.frame())
            if exc.fatal:
                await self.connection.close(CLOSE_CODES[exc.code], exc.code)

    async def _send(self, frame: GatewayFrame) -> None:
        await self.connection.send(encode(frame))

    async def send_quietly(self, frame: GatewayFrame) -> None:
        """Send ``frame`` unless the connection has closed meanwhile."""
        with contextlib.suppress(ConnectionClosed):
            await self._send(frame)

    async def _redis_step(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, waiting out Redis outages (the agent told ``UNAVAILABLE`` once)."""

        async def attempt() -> T:
            started = self._outage.now()
            try:
                result = await op()
            except Exception as exc:
                # Only an outage is told, not an aftershock (a pooled connection to a
                # restarted Redis failing once): the shared Outage tells them apart.
                if (
                    redis_unavailable(exc)
                    and (self._outage.failed(exc, attempt_started=started) or self._outage.down)
                    and not self._told_unavailable
                ):
                    self._told_unavailable = True
                    with contextlib.suppress(ConnectionClosed):
                        await self._send(
                            Error(UNAVAILABLE, "the gateway cannot reach its store; it retries")
                        )
                raise
            if self._told_unavailable:
                self._told_unavailable = False
                self.gateway.reader.wake(self)
            return result

        return await retry(attempt, transient=redis_unavailable, outage=self._outage)

    # -- windows ---------------------------------------------------------------------------

    async def _starter(self) -> None:
        while not self._closing:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            if self._closing:
                return
            entries, self._inbox = self._inbox, []
            if entries:
                try:
                    await self._start(entries)
                finally:
                    self._reserved -= len(entries)
                    self.gateway.reader.wake(self)

    async def _start(self, entries: list[TaskEntry]) -> None:
        """Start a delivery of entries, settle those that must not run, send the rest."""
        stream = self._stream
        assert stream is not None
        started_at = start_stamp()
        # The entries do not name their functions (the start answers them from the tasks'
        # hashes), so the allow-list check and the code the agent lacks are looked up with
        # the start for the functions this session ran last, and after it only for others.
        guess = list(self._recent_functions)

        async def start_and_look_up() -> tuple[list[Start], Lookup]:
            starting = stream.start(entries, started_at=started_at, take=True)
            if not guess:
                return await starting, Lookup({}, frozenset())
            return await asyncio.gather(
                starting, stream.lookup(self.ledger.needs_code(guess), guess)
            )

        starts, lookup = await self._redis_step(start_and_look_up)
        entries = [
            entry.of_task(start.function_id, start.task_group_id)
            for entry, start in zip(entries, starts, strict=True)
        ]
        run = [entry for entry, start in zip(entries, starts, strict=True) if start.run]
        fids = list(dict.fromkeys(entry.function_id for entry in run))
        others = [fid for fid in fids if fid not in guess]
        if others:
            more = await self._redis_step(
                lambda: stream.lookup(self.ledger.needs_code(others), others)
            )
            lookup = Lookup({**lookup.codes, **more.codes}, lookup.refused | more.refused)
        for fid in fids:
            self._recent_functions.pop(fid, None)
            self._recent_functions[fid] = None
        while len(self._recent_functions) > RECENT_FUNCTIONS:
            del self._recent_functions[next(iter(self._recent_functions))]
        tasks: list[Task] = []
        now_settle: list[Completion] = []
        for entry, start in zip(entries, starts, strict=True):
            if not start.run:
                now_settle.append(
                    Completion(
                        entry.entry_id,
                        entry.task_id,
                        entry.task_group_id,
                        None,
                        pending_notice=start.pending_notice,
                    )
                )
                continue
            failure = self._refusal(entry, start.attempt, lookup.refused, lookup.codes)
            if failure is not None:
                outcome = _Failed(failure)
                now_settle.append(
                    Completion(
                        entry.entry_id, entry.task_id, entry.task_group_id, outcome, start.attempt
                    )
                )
                continue
            did = delivery_id(entry.entry_id, start.attempt)
            self._deliveries[did] = Delivery(entry, start.attempt)
            tasks.append(
                Task(
                    task_id=entry.task_id,
                    delivery_id=did,
                    attempt=start.attempt,
                    function_id=entry.function_id,
                    payload=entry.payload,
                    walltime_s=entry.task_walltime_s(),
                    result_strategies=entry.result_strategies(),
                )
            )
        if now_settle:
            await self._redis_step(lambda: self._settler.write(now_settle, agent=stream.consumer))
        if not tasks:
            return
        codes = {fid: code for fid, code in lookup.codes.items() if code is not None}
        try:
            async with self._window_lock:
                for frame in self.ledger.window(tasks, codes):
                    await self._send(frame)
        except ConnectionClosed:
            # Started for this agent but never sent: back to the stream, attempt not counted.
            await self._hand_back_deliveries([t.delivery_id for t in tasks])
            raise

    def _refusal(
        self,
        entry: TaskEntry,
        attempt: int,
        refused: frozenset[str],
        codes: dict[str, str | None],
    ) -> ExceptionRecord | None:
        fid = entry.function_id
        max_attempts = self.gateway.settings.max_attempts
        if attempt > max_attempts:
            return error_record(
                WORKER_LOST,
                f"the agents running this task were lost {attempt - 1} times (max_attempts "
                f"is {max_attempts}); it is not started again",
            )
        if fid in refused:
            return error_record(
                FUNCTION_NOT_ALLOWED,
                f"function {fid} is not in the endpoint's allow-list; the task was not run",
            )
        if fid in codes and codes[fid] is None:
            return error_record(FUNCTION_NOT_FOUND, f"no code is stored for function {fid}")
        try:
            entry.task_walltime_s()
        except ValueError as exc:
            error = DeserializationError(f"the task's {exc}")
            return error_record(type(error).__name__, str(error), module=type(error).__module__)
        return None

    # -- outcomes --------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Settle every outcome accepted so far (:meth:`_on_frame`), in batches."""
        while self._outcome_batches:
            batches, self._outcome_batches = self._outcome_batches, []
            accepted = Accepted(
                tuple(o for a in batches for o in a.outcomes),
                tuple(r for a in batches for r in a.refused),
            )
            for refusal in accepted.refused:
                log.warning(
                    "agent %s of endpoint %s: outcome refused, %s: %s",
                    self.ledger.agent,
                    self.endpoint_id,
                    refusal.code,
                    refusal.message,
                )
            batch = [
                Completion(d.entry.entry_id, o.task_id, d.entry.task_group_id, o, d.attempt)
                for o in accepted.outcomes
                for d in (self._deliveries[o.delivery_id],)
            ]
            statuses: list[int] = []
            if batch:
                statuses, _ = await self._redis_step(
                    functools.partial(
                        self._settler.write_with_notices,
                        batch,
                        agent=self.ledger.agent,
                        announced=functools.partial(self._push, accepted.outcomes, batch),
                    )
                )
            settled: list[str] = []
            lost: list[str] = []
            for o, status in zip(accepted.outcomes, statuses, strict=True):
                self._deliveries.pop(o.delivery_id, None)
                if status == NOT_OURS:
                    lost.append(o.delivery_id)
                else:
                    settled.append(o.delivery_id)
            answer = self.ledger.answer(settled, lost=lost, refused=accepted.refused)
            with contextlib.suppress(ConnectionClosed):
                await self._send(answer)

    def _push(
        self,
        outcomes: Sequence[TaskOutcome],
        batch: Sequence[Completion],
        statuses: list[int],
        notices: list[str],
    ) -> None:
        """Push the outcomes just written and announced to this process's subscribers."""
        pushed = [
            Settlement(c.task_group_id, notice, o)
            for o, c, status, notice in zip(outcomes, batch, statuses, notices, strict=True)
            if status == WRITTEN and notice
        ]
        if pushed:
            self.gateway.on_settled(pushed)

    # -- hand-back, code, status -----------------------------------------------------------

    async def _hand_back(self, frame: HandBack) -> None:
        returned, ignored = self.ledger.hand_back(frame)
        if ignored:
            log.warning(
                "agent %s handed back %d deliveries it does not hold; ignored",
                self.ledger.agent,
                len(ignored),
            )
        await self._hand_back_deliveries([ref.delivery_id for ref in returned])

    async def _hand_back_deliveries(self, delivery_ids: Sequence[str]) -> None:
        stream = self._stream
        assert stream is not None
        pairs = [
            (d.entry, d.attempt)
            for did in delivery_ids
            if (d := self._deliveries.pop(did, None)) is not None
        ]
        if pairs:
            count = await self._redis_step(lambda: stream.hand_back(pairs))
            log.info("agent %s handed back %d tasks", self.ledger.agent, count)

    async def _need_code(self, frame: NeedCode) -> None:
        stream = self._stream
        assert stream is not None
        lookup = await self._redis_step(lambda: stream.lookup(frame.function_ids, ()))
        for answer in self.ledger.functions(frame, lookup.codes):
            await self._send(answer)

    async def _record(self, frame: Status) -> None:
        hello = self.hello
        assert hello is not None
        cap = hello.capacity
        status = StatusRecord(
            agent=hello.agent,
            host=hello.host or socket.gethostname(),
            version=hello.version,
            engine=cap.engine,
            workers=frame.workers,
            max_concurrency=cap.max_concurrency,
            capacity=cap.workers + cap.max_concurrency,
            running=frame.busy,
            held=frame.busy + frame.queued + frame.held,
            accelerators=",".join(cap.accelerators),
            draining=int(frame.draining),
            heartbeat_at=time.time(),
        )
        self.draining = frame.draining
        key = self.gateway.keys.endpoint_status(self.endpoint_id)
        interval_s = self.gateway.settings.heartbeat_s
        await self._redis_step(
            lambda: write_status(self.gateway.redis, key, status, interval_s=interval_s)
        )

    # -- leaving ---------------------------------------------------------------------------

    def _lease_ids(self) -> list[str]:
        ids = []
        for ref in self.ledger.leases():
            delivery = self._deliveries.get(ref.delivery_id)
            if delivery is not None:
                ids.append(delivery.entry.entry_id)
        return ids

    async def _return_unsent(self) -> None:
        """Entries delivered by the reader and never started go back to the stream."""
        entries, self._inbox = self._inbox, []
        self._reserved = 0
        stream = self._stream
        if entries and stream is not None:
            try:
                await stream.requeue(entries)
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
                log.warning(
                    "%d tasks read for a closed connection run after their lease", len(entries)
                )

    async def drain(self, grace_s: float | None = None) -> None:
        """Tell the agent this gateway is going away (it reconnects elsewhere)."""
        self.draining = True
        with contextlib.suppress(ConnectionClosed):
            await self._send(Drain(grace_s))


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failure the gateway itself settles (never sent to the agent)."""

    exception: ExceptionRecord
    state: TaskState = TaskState.FAILED
    result: str | None = None
    stdout: str = ""
    stderr: str = ""
