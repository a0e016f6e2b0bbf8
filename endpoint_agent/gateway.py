"""The agent reaching its endpoint through the gateway: one outbound WebSocket, no Redis.

The agent connects to ``<ws_url>/v1/endpoint`` with its endpoint credential as bearer and
speaks the agent protocol (:mod:`service_common.agent_protocol`, whose docstring is the
spec; this module is its I/O shell on the agent's side):

* **hello** with its capacity (engine, workers, max_concurrency, prefetch, accelerators)
  and, after a reconnect, the deliveries it still runs and the outcomes it still holds; the
  ``welcome`` names those that are another agent's now (``lost``): they are stopped and
  their outcomes forgotten, each one logged.
* **Credit** is what the agent can start soon: each window asks the gateway for the tasks
  the loop can take now (its free slots; ``prefetch`` adds look-ahead, 0 keeps strict
  backpressure) minus the credit still outstanding, and never more than the outbox has room
  for (:meth:`~service_common.agent_protocol.Outbox.room`): when the outbox is full the
  agent takes no work until the gateway answers. When the tasks in hand and on their way
  are twice what the loop wants, and more by a worker's worth (its tasks turned long, so
  the engine's look-ahead collapsed), the agent sends one ``withdraw`` for the excess
  credit and no other until ``withdrawn`` answers it, which lowers its count by what the
  gateway took back: tasks the workers could not start soon go to the endpoint's other
  agents. The loop asks this of a full agent too (:meth:`GatewayTransport.want`).
* **Tasks** arrive in windows with their function's code, once per function per connection;
  they are resolved against the agent's own ``allowed_functions`` and
  ``allowed_strategies`` and handed to the shared dispatch core (:mod:`endpoint_agent.agent`).
* **Outcomes** go to the :class:`~service_common.agent_protocol.Outbox` the moment a task
  ends (its slot is free then) and are sent in batches: everything completed in one turn of
  the event loop shares a frame. Each is held until a ``settled`` frame answers it, sent
  again after a reconnect, and never dropped silently.
* **Status** every ``welcome.heartbeat_s``; **cancel** frames stop the tasks they name;
  a stop of the agent hands back the tasks not started (and those that arrived after it)
  in ``hand_back`` frames.
* **Drain** means that copy of the gateway is going away (a restart, a scale-down), not
  that the agent should: the agent closes the connection and reconnects (to the next
  ``ws_url``), its running and received tasks named in the new hello, so the gateway that
  takes over keeps them and accepts their outcomes (the ``drain`` frame's ``grace_s`` is
  not used). An agent stops only when it is told to itself (a signal, :meth:`Agent.stop`).

**Reconnects.** When the gateway goes away (a restart, a network cut, a refused credential)
the agent never exits: it reconnects with capped, jittered backoff
(:mod:`service_common.retry`), logging the outage once when it starts and once when it
ends. Tasks keep running meanwhile and their outcomes are held; after the new hello the
gateway keeps those whose lease it still holds, so their outcomes are accepted (any copy
of ws_service can: what a connection holds is checked against Redis).

**Several copies.** ``ws_url`` may name several copies of ws_service (comma-separated),
for sites with no load balancer in front of them. The agent connects to the first; after
a failed connect or a dropped connection it tries the next one, round robin, so an agent
whose copy died reaches another within one backoff step and keeps its running tasks.

**TLS.** A ``wss://`` gateway's certificate is always verified, against ``ca_file``
(``FXBROKER_CA_FILE``) when set, else ``SSL_CERT_FILE`` or the default authorities (the
rule of :mod:`sdk.tls`); there is no setting that turns it off. A refused certificate is
logged as an error on each attempt and retried like any failed connect (the agent never
exits), so the agent connects once the gateway presents a certificate it trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from endpoint_agent.functions import FunctionCatalog, FunctionInfo
from endpoint_agent.settings import AgentSettings
from endpoint_agent.transport import Host, Received
from endpoint_agent.worker import FUNCTION_NOT_FOUND, Outcome
from sdk import tls
from sdk.messages import error_record
from service_common.agent_protocol import (
    AGENT_PATH,
    CREDIT_MAX,
    FRAME_BYTES_MAX,
    ITEMS_PER_FRAME_MAX,
    SUPPORTED_VERSIONS,
    UNAVAILABLE,
    Cancel,
    Capacity,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    Frame,
    Functions,
    HandBack,
    Hello,
    Outbox,
    ProtocolError,
    Settled,
    Status,
    TaskOutcome,
    Tasks,
    Welcome,
    Withdraw,
    Withdrawn,
    decode_gateway_frame,
    encode,
)
from service_common.retry import DEFAULT_BACKOFF, Backoff, Outage, wait_or_stop
from service_common.tasks.heartbeat import package_version
from service_common.tasks.stream import Lookup

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
"""Longest wait for the gateway's handshake and welcome before trying again."""


def gateway_url(ws_url: str) -> str:
    """The gateway's route on a WebSocket service: ``ws://h:p`` -> ``ws://h:p/v1/endpoint``."""
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/")
    if not path.endswith(AGENT_PATH):
        if path.endswith("/v1"):
            path = path[: -len("/v1")]
        path += AGENT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class GatewayTransport:
    """Serves one agent through the endpoint gateway (see the module docstring)."""

    name = "gateway"

    def __init__(
        self,
        settings: AgentSettings,
        host: Host,
        *,
        outage: Outage,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        s = settings
        self.settings = s
        self.urls = tuple(gateway_url(url) for url in s.ws_urls)
        self._ssl = tls.client_context(s.ca_file or None)  # a bad file fails the start
        self._turn = 0  # index into urls of the copy the next connect tries
        self._host = host
        self._outage = outage
        self._backoff = backoff
        self._outbox = Outbox(max_outcomes=s.max_held_outcomes, max_bytes=s.max_held_bytes)
        self._catalog = FunctionCatalog(
            _no_lookup, allowed=s.allowed_strategies, allowed_functions=s.allowed_functions
        )
        self._version = package_version()
        self._codes: dict[str, str] = {}  # function code received on this connection
        self._inbox: list[Received] = []  # received, not yet taken by the loop
        self._credit = 0  # granted on this connection, not yet received nor withdrawn
        self._withdrawing = False  # a withdraw is sent and its answer has not come
        self._withdraws = (0, 0)  # (sent, answered) on this connection, for finish()
        self._answered_withdraw = asyncio.Event()
        self._nothing = False  # the gateway found no task for the last grant
        self._ws: ClientConnection | None = None
        self._welcome: Welcome | None = None
        self._send_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._answered = asyncio.Event()
        self._closing = asyncio.Event()
        self._draining = False
        self._flusher: asyncio.Task[None] | None = None
        self._leaving: asyncio.Task[None] | None = None
        self._full_logged = False
        self._stop = asyncio.Event()  # the run's stop request (set by start)

    # -- introspection -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The gateway the agent is connected to, or tries next."""
        return self.urls[self._turn]

    @property
    def connected(self) -> bool:
        """Whether a connection is open and welcomed."""
        return self._connected.is_set()

    @property
    def held_outcomes(self) -> int:
        """Outcomes not yet answered by the gateway."""
        return len(self._outbox)

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError | WebSocketException | TimeoutError)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to do: the connection opens when the agent runs."""

    async def aclose(self) -> None:
        await self._close()

    async def start(
        self, *, stop: asyncio.Event, stopped: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        self._closing.clear()
        self._draining = False
        self._stop = stop
        return [asyncio.create_task(self._connection_loop(stopped), name="fxbroker-gateway")]

    async def stopped(self) -> None:
        self._closing.set()
        await self._close()

    async def _close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(1000)

    async def _connection_loop(self, stopped: asyncio.Event) -> None:
        """Connect, serve the connection, and connect again when it drops, until the run
        is over; every failure to connect waits the shared backoff (never an exit). After a
        failure or a drop the next copy of ``urls`` is tried."""
        failures = 0
        while not (stopped.is_set() or self._closing.is_set()):
            started = self._outage.now()
            url = self.url
            try:
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {self.settings.credential}"},
                    max_size=FRAME_BYTES_MAX,
                    open_timeout=OPEN_TIMEOUT_S,
                    user_agent_header=f"fxbroker-agent/{self._version}",
                    **tls.connect_options(url, self._ssl),
                ) as ws:
                    self._ws = ws
                    if self._closing.is_set():  # stopped while connecting: nothing was closed
                        return
                    await self._serve(ws)
                failures = 0
                if not self._closing.is_set():
                    self._outage.failed(ConnectionError("the gateway closed the connection"))
            except (OSError, WebSocketException, TimeoutError, ProtocolError) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code == 401:
                    log.error("the gateway refused this endpoint's credential (HTTP 401)")
                refused = tls.certificate_error(exc)
                if refused is not None:
                    log.error("the gateway at %s is not trusted: %s", url, tls.untrusted(refused))
                self._outage.failed(exc, attempt_started=started)
                failures += 1
            finally:
                self._disconnected()
            if stopped.is_set() or self._closing.is_set():
                return
            self._turn = (self._turn + 1) % len(self.urls)
            if len(self.urls) > 1:
                log.debug("connecting to the gateway at %s next (after %s)", self.url, url)
            await wait_or_stop(self._backoff.delay_s(max(failures, 1)), self._closing)

    def _disconnected(self) -> None:
        if self._ws is not None or self._connected.is_set():
            self._ws = None
            self._welcome = None
            self._connected.clear()
            self._credit = 0
            self._withdrawing = False
            self._withdraws = (0, 0)
            self._answered_withdraw.set()  # nothing more will be answered on it
            self._nothing = False
            self._codes.clear()
            self._outbox.disconnected()
            self._host.wake.set()

    async def _serve(self, ws: ClientConnection) -> None:
        """Say hello, take the welcome, then handle the gateway's frames until it closes."""
        running = [DeliveryRef(w.task_id, w.key) for w in (*self._host.unfinished(), *self._inbox)]
        await ws.send(encode(self._hello(running)))
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            first = decode_gateway_frame(await ws.recv(decode=False))
        if isinstance(first, Error):
            raise ProtocolError(first.code, f"the gateway refused the hello: {first.message}")
        if not isinstance(first, Welcome):
            raise ProtocolError("UNEXPECTED_FRAME", f"expected welcome, got {first.TYPE}")
        self._welcome_received(first)
        self._connected.set()
        self._outage.recovered()
        self._host.wake.set()
        beats = asyncio.create_task(self._beat(ws, first.heartbeat_s), name="fxbroker-status")
        try:
            self._flush_soon()
            async for message in ws:
                if isinstance(message, str):
                    raise ProtocolError("BAD_FRAME", "the gateway sent a text frame")
                self._handle(decode_gateway_frame(message, max_frame_bytes=FRAME_BYTES_MAX))
        except ConnectionClosed:
            pass
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

    def _hello(self, running: Sequence[DeliveryRef]) -> Hello:
        s = self.settings
        return Hello(
            versions=SUPPORTED_VERSIONS,
            agent=s.consumer,
            host=socket.gethostname(),
            version=self._version,
            capacity=Capacity(
                engine=s.engine,
                workers=s.workers,
                max_concurrency=s.max_concurrency,
                prefetch=s.prefetch,
                accelerators=s.accelerators,
            ),
            running=tuple(running),
            held=self._outbox.refs(),
        )

    def _welcome_received(self, welcome: Welcome) -> None:
        self._welcome = welcome
        if not welcome.lost:
            return
        lost = set(welcome.lost)
        for outcome in self._outbox.forget_lost(lost):
            log.warning(
                "the outcome of task %s is dropped: the gateway no longer holds the task "
                "for this agent (its outcome was stored before the connection dropped, or "
                "its lease lapsed and it is another agent's now)",
                outcome.task_id,
            )
        self._inbox = [w for w in self._inbox if w.task_id not in lost]
        self._host.forget([w.key for w in self._host.unfinished() if w.task_id in lost])

    async def _leave(self) -> None:
        """Close the connection of a gateway that is going away; the connection loop then
        connects again, to the next URL, keeping what the agent runs and holds."""
        ws = self._ws
        if ws is not None:
            await ws.close(1001, "the gateway is going away")

    async def _send(self, frame: Frame) -> bool:
        """Send ``frame`` on the open connection; False when there is none (or it broke)."""
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return False
        try:
            async with self._send_lock:
                await ws.send(encode(frame))
        except ConnectionClosed:
            return False
        return True

    async def _beat(self, ws: ClientConnection, interval_s: float) -> None:
        while True:
            await self._send(self._status())
            await asyncio.sleep(interval_s)

    def _status(self) -> Status:
        held, running, draining = self._host.counts()
        return Status(
            workers=self.settings.workers,
            busy=running,
            queued=max(0, held - running) + len(self._inbox),
            held=len(self._outbox),
            draining=draining or self._draining,
        )

    # -- frames from the gateway -------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Tasks):
            self._tasks(frame)
        elif isinstance(frame, Withdrawn):
            self._credit = max(0, self._credit - frame.count)
            self._withdrawing = False
            sent, answered = self._withdraws
            self._withdraws = (sent, answered + 1)
            self._answered_withdraw.set()
            self._host.wake.set()
        elif isinstance(frame, Settled):
            for refusal in self._outbox.acknowledge(frame):
                log.warning(
                    "the gateway refused the outcome of task %s (%s): %s",
                    refusal.task_id,
                    refusal.code,
                    refusal.message,
                )
            self._answered.set()
            self._host.wake.set()  # the outbox has room again
        elif isinstance(frame, Cancel):
            for task_id in frame.task_ids:
                self._host.cancel(task_id)
        elif isinstance(frame, Drain):
            log.info("the gateway at %s is going away: connecting to another", self.url)
            self._connected.clear()  # no more credit or outcomes on this connection
            self._leaving = asyncio.get_running_loop().create_task(self._leave())
        elif isinstance(frame, Functions):
            self._codes.update((c.function_id, c.code) for c in frame.functions)
        elif isinstance(frame, Error):
            if frame.code == UNAVAILABLE:
                log.warning("the gateway cannot reach its store for now: %s", frame.message)
            else:
                log.error("the gateway reports %s: %s", frame.code, frame.message)
        else:
            raise ProtocolError("UNEXPECTED_FRAME", f"a {frame.TYPE} frame after the welcome")

    def _tasks(self, frame: Tasks) -> None:
        if not frame.tasks:
            self._nothing = True  # the gateway's word: no task for the credit granted
            self._host.wake.set()
        self._codes.update((c.function_id, c.code) for c in frame.functions)
        for task in frame.tasks:
            self._credit = max(0, self._credit - 1)
            code = self._codes.get(task.function_id)
            found = self._catalog.load(task.function_id, code)
            if code is None and not isinstance(found, FunctionInfo):
                found = error_record(
                    FUNCTION_NOT_FOUND,
                    f"the gateway sent no code for function {task.function_id}",
                )
            function = found if isinstance(found, FunctionInfo) else None
            self._inbox.append(
                Received(
                    task.delivery_id,
                    task.task_id,
                    task.attempt,
                    task.payload,
                    function=function,
                    failure=None if function is not None else found,  # type: ignore[arg-type]
                    walltime_s=task.walltime_s,
                    result_strategies=task.result_strategies,
                )
            )
        self._host.wake.set()

    # -- the loop's side ---------------------------------------------------------------

    async def receive(self, count: int, *, burst: bool) -> list[Received]:
        """A window of tasks, waiting up to ``block_ms`` for one. A ``burst`` run is told
        "nothing left" (an empty window) only on the gateway's word, given on a live
        connection after a grant, that the stream had nothing: until then it waits, through
        reconnects, or until stopped."""
        wake = self._host.wake
        while True:
            if burst:
                await _first_of(self._connected, self._stop)
            wake.clear()
            await self._grant(count)
            if self._inbox or self._stop.is_set() or (burst and self._nothing):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.block_ms / 1000)
            waiting_for_word = burst and not (self._nothing or self._stop.is_set())
            if self._inbox or not (
                waiting_for_word and (self._credit > 0 or not self._connected.is_set())
            ):
                break
        window, self._inbox = self._inbox, []
        return window

    async def _grant(self, count: int) -> None:
        """Grant credit up to ``count`` tasks in hand, as far as the outbox has room."""
        if self._inbox or self._draining or not self._connected.is_set():
            return
        # Outcomes first: the gateway never sees credit for a slot whose task's outcome it
        # has not been sent.
        await self._send_outcomes()
        held = len(self._host.unfinished())
        room = self._outbox.room(held + self._credit)
        want = min(count - self._credit, room)
        await self.want(count)
        if want > 0:
            self._full_logged = False
            if await self._send(Credit(want)):
                self._credit += want
                self._nothing = False
        elif room == 0 and not self._full_logged:
            self._full_logged = True
            log.warning(
                "%d outcomes (%d bytes) wait for the gateway's answer: taking no more work "
                "until it answers",
                len(self._outbox),
                self._outbox.bytes,
            )

    async def want(self, count: int) -> None:
        """Withdraw the credit past ``count`` once the tasks in hand and on their way
        (held + credit) are at least twice what the loop wants (held + ``count``), and
        the excess is a worker's worth: tasks turned long and the look-ahead collapsed, so
        what the workers cannot start soon is left to the endpoint's other agents. A
        look-ahead wobbling during quick calls stays well under that bar, and there is one
        withdraw at a time (the next waits for ``withdrawn``), so there is no chatter."""
        count = max(count, 0)
        excess = self._credit - count
        held = len(self._host.unfinished())
        if excess < max(1, self.settings.workers, held + count):
            return
        if self._withdrawing or self._draining:
            return
        if await self._send(Withdraw(excess)):
            self._withdrawing = True
            self._withdraws = (self._withdraws[0] + 1, self._withdraws[1])

    def settle(self, task: Received, outcome: Outcome | None) -> None:
        if outcome is not None:
            self._outbox.add(
                TaskOutcome(
                    task.task_id,
                    task.key,
                    outcome.state,
                    completed_at=time.time(),
                    result=outcome.result,
                    exception=outcome.exception,
                    stdout=outcome.stdout,
                    stderr=outcome.stderr,
                )
            )
            self._answered.clear()
            self._flush_soon()
        self._host.settled([task.key])

    def _flush_soon(self) -> None:
        """Send the outbox on the next turn of the event loop: every outcome completed
        meanwhile shares the frame."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="fxbroker-outcomes")

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one turn: let the outcomes of this turn join the batch
        await self._send_outcomes()

    async def _send_outcomes(self) -> None:
        """Send every outcome not yet sent on this connection, in frames that fit."""
        max_bytes = FRAME_BYTES_MAX if self._welcome is None else self._welcome.max_frame_bytes
        while self._connected.is_set():
            frame = self._outbox.next_frame(max_frame_bytes=max_bytes)
            if frame is None:
                return
            if not await self._send(frame):
                return  # resent after the next hello

    async def hand_back(self, tasks: Sequence[Received]) -> None:
        refs = [DeliveryRef(t.task_id, t.key) for t in tasks]
        if not refs:
            return
        sent = True
        for chunk in _chunks(refs, ITEMS_PER_FRAME_MAX):
            sent = await self._send(HandBack(tuple(chunk))) and sent
        if sent:
            log.info("handed %d tasks back to the gateway", len(refs))
        else:
            log.warning(
                "could not hand %d tasks back while the gateway is away; they run again "
                "after their lease",
                len(refs),
            )

    async def draining(self) -> None:
        self._draining = True
        await self._send(self._status())

    async def finish(self, grace_s: float | None) -> None:
        leftover, self._inbox = self._inbox, []
        await self.hand_back(leftover)
        try:
            async with asyncio.timeout(grace_s):
                while len(self._outbox):
                    self._answered.clear()
                    self._flush_soon()
                    await self._answered.wait()
        except TimeoutError:
            log.warning(
                "stopping with %d outcomes the gateway has not answered; their tasks run "
                "again after their lease",
                len(self._outbox),
            )
        await self._applied()

    async def _applied(self) -> None:
        """Wait (at most :data:`APPLIED_WAIT_S`) until the gateway has applied every frame
        sent so far, hand-backs included: the gateway handles an agent's frames in order, so
        the answer to a last ``withdraw`` (of all the credit, which a stopping agent no
        longer wants) comes after them. Without it the agent could close while its last
        hand-back is still being written, and its tasks would read ``running`` a moment
        after the agent stopped."""
        if not self._connected.is_set():
            return
        if not await self._send(Withdraw(CREDIT_MAX)):
            return
        self._withdrawing = True
        self._withdraws = (self._withdraws[0] + 1, self._withdraws[1])
        try:
            async with asyncio.timeout(APPLIED_WAIT_S):
                while self._connected.is_set() and self._withdraws[1] < self._withdraws[0]:
                    self._answered_withdraw.clear()
                    await self._answered_withdraw.wait()
        except TimeoutError:
            log.warning("the gateway did not confirm the agent's last frames in time")


APPLIED_WAIT_S = 10.0
"""How long a stopping agent waits for the gateway to confirm its last frames."""


async def _first_of(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _no_lookup(fetch: Iterable[str], check: Iterable[str]) -> Lookup:
    """The gateway sends code with the tasks and checks the allow-list itself."""
    return Lookup({}, frozenset())


def _chunks(items: Sequence[DeliveryRef], size: int) -> list[Sequence[DeliveryRef]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
