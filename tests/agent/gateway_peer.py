"""A gateway peer for the agent's transport tests: a real WebSocket server on a free port that
speaks the agent protocol through its shared :class:`~service_common.agent_protocol.Ledger`,
serving tasks from a list in memory instead of an endpoint's stream in Redis.

It checks what the agent must do (bearer credential, hello first, credit, one outcome per
delivery) by the protocol package's own rules and records what it saw, so a test can assert
on credit, outcomes, hand-backs and status frames. It can be stopped and started again on the
same port, keeping its queue and what it handed out, as a restarted gateway keeps Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
from collections import deque
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from service_common.agent_protocol import (
    AGENT_PATH,
    Cancel,
    Credit,
    DeliveryRef,
    Drain,
    Frame,
    HandBack,
    Hello,
    Ledger,
    Outcomes,
    ProtocolError,
    Status,
    Task,
    TaskOutcome,
    Welcome,
    Withdraw,
    decode_agent_frame,
    encode,
)


@dataclass
class GatewayPeer:
    credential: str
    port: int
    codes: dict[str, str] = field(default_factory=dict)
    queue: deque[Task] = field(default_factory=deque)
    outcomes: dict[str, list[TaskOutcome]] = field(default_factory=dict)
    hand_backs: list[DeliveryRef] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    hellos: list[Hello] = field(default_factory=list)
    refused_auth: int = 0
    handshakes: int = 0
    handshake_gate: asyncio.Event | None = None
    """Set: every opening handshake waits for this event before it is answered."""
    max_in_hand: int = 0
    """Most tasks one connection held at once: handed without outcome plus unused credit."""
    handed: dict[str, DeliveryRef] = field(default_factory=dict)
    """Every delivery handed out and not yet answered or handed back (kept across restarts)."""
    withdraws: list[Withdraw] = field(default_factory=list)
    answer_withdraws: bool = True
    """False: withdraws wait unanswered until :meth:`answer_withdraws_now`."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: Server | None = None
    _live: dict[ServerConnection, Ledger] = field(default_factory=dict)
    _unanswered: list[tuple[ServerConnection, Withdraw]] = field(default_factory=list)

    def add(self, task_id: str, function_id: str, payload: str, walltime_s: float | None = None):
        self.queue.append(Task(task_id, f"d{next(self._ids)}", 1, function_id, payload, walltime_s))
        for ws in list(self._live):
            asyncio.get_running_loop().create_task(self._pump(ws))

    async def start(self) -> None:
        self._server = await serve(
            self._handler, "127.0.0.1", self.port, process_request=self._auth
        )

    async def stop(self) -> None:
        """Close every connection abruptly (1011) and stop listening, as a crash would."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        self._live.clear()

    async def send(self, frame: Frame) -> None:
        for ws in list(self._live):
            with contextlib.suppress(Exception):
                await ws.send(encode(frame))

    async def send_raw(self, message: bytes) -> None:
        """Send ``message`` as it is (a frame that need not decode) to every agent."""
        for ws in list(self._live):
            with contextlib.suppress(Exception):
                await ws.send(message)

    def credit(self) -> int:
        """Credit outstanding on the live connections."""
        return sum(ledger.credit for ledger in self._live.values())

    async def answer_withdraws_now(self) -> None:
        """Answer the withdraws held back, and every later one at once."""
        self.answer_withdraws = True
        held, self._unanswered = self._unanswered, []
        for ws, frame in held:
            await self._withdraw(ws, frame)

    async def _withdraw(self, ws: ServerConnection, frame: Withdraw) -> None:
        ledger = self._live.get(ws)
        if ledger is not None:
            with contextlib.suppress(Exception):
                await ws.send(encode(ledger.withdraw(frame)))
        self.changed.set()

    async def cancel(self, *task_ids: str) -> None:
        await self.send(Cancel(task_ids))

    async def drain(self, grace_s: float | None) -> None:
        await self.send(Drain(grace_s))

    async def _auth(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self.changed.set()
        if self.handshake_gate is not None:
            await self.handshake_gate.wait()
        if request.path != AGENT_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "no route\n")
        if Headers(request.headers).get("Authorization") != f"Bearer {self.credential}":
            self.refused_auth += 1
            self.changed.set()
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "bad credential\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        ledger = Ledger()
        hello = decode_agent_frame(await ws.recv(decode=False))
        assert isinstance(hello, Hello)
        version = ledger.greet(hello)
        self.hellos.append(hello)
        ledger.adopt(r for r in (*hello.running, *hello.held) if r.delivery_id in self.handed)
        lost = tuple(
            r.task_id for r in (*hello.running, *hello.held) if r.delivery_id not in self.handed
        )
        await ws.send(encode(Welcome(version, "ep", 30_000, 0.05, lost=lost)))
        self._live[ws] = ledger
        try:
            async for message in ws:
                assert isinstance(message, bytes)
                frame = decode_agent_frame(message)
                ledger.admit(frame)
                if isinstance(frame, Credit):
                    ledger.grant(frame)
                    await self._pump(ws)
                elif isinstance(frame, Outcomes):
                    accepted = ledger.accept(frame)
                    for o in accepted.outcomes:
                        self.outcomes.setdefault(o.task_id, []).append(o)
                        self.handed.pop(o.delivery_id, None)
                    await ws.send(
                        encode(
                            ledger.answer(
                                [o.delivery_id for o in accepted.outcomes],
                                refused=accepted.refused,
                            )
                        )
                    )
                elif isinstance(frame, HandBack):
                    returned, _ = ledger.hand_back(frame)
                    for ref in returned:
                        self.hand_backs.append(ref)
                        self.handed.pop(ref.delivery_id, None)
                elif isinstance(frame, Withdraw):
                    self.withdraws.append(frame)
                    if self.answer_withdraws:
                        await self._withdraw(ws, frame)
                    else:
                        self._unanswered.append((ws, frame))
                elif isinstance(frame, Status):
                    self.statuses.append(frame)
                self.changed.set()
        except ProtocolError as exc:
            await ws.close(1002, str(exc))
            raise
        finally:
            self._live.pop(ws, None)

    async def _pump(self, ws: ServerConnection) -> None:
        ledger = self._live.get(ws)
        if ledger is None:
            return
        tasks = [self.queue.popleft() for _ in range(min(ledger.credit, len(self.queue)))]
        if tasks:
            for frame in ledger.window(tasks, self.codes):
                await ws.send(encode(frame))
            for t in tasks:
                self.handed[t.delivery_id] = t.ref
        self.max_in_hand = max(self.max_in_hand, ledger.handed + ledger.credit)
        self.changed.set()

    async def until(self, condition: object, what: str, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until ``condition()`` holds, woken by each frame the peer sees."""
        assert callable(condition)
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()
