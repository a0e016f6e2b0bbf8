"""The gateway of one ws_service copy: its Redis connections, its reader, its agents.

:class:`Gateway` owns what every agent session of the copy shares: the Redis clients, the
:class:`~ws_service.gateway.reader.Reader` that reads every endpoint's stream for them, one
cancel subscription for every endpoint (``PSUBSCRIBE``; a notice names a task, which only
the session that handed it out forwards), and the registry of live sessions.

**The bound.** The copy's gateway holds at most ``gateway_redis_connections`` Redis
connections, named ``client_name``, however many agents it serves: one for the reader's
blocked wait, one for the cancel subscription, and a pool of the rest for everything else
(starts, settles, lease renewals, status writes), where a command that finds every
connection busy waits for one. Agents' sessions never open a connection of their own. On a
Redis Cluster the pool's bound is per node, and the blocked wait is one per hash slot of the
streams waited on (:mod:`service_common.blocking_read`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence

from websockets.asyncio.server import ServerConnection

from sdk.keys import Keys
from service_common.redis_client import RedisClient, connect_redis, redis_unavailable
from service_common.retry import Outage, retry
from service_common.tasks.cancels import CancelListener
from ws_service.gateway.reader import Reader
from ws_service.gateway.session import AgentSession, Settlement
from ws_service.settings import WsSettings

log = logging.getLogger(__name__)


class Gateway:
    """Opened with ``async with``; :meth:`serve` runs one agent connection."""

    def __init__(
        self,
        settings: WsSettings,
        *,
        redis_outage: Outage,
        on_settled: Callable[[Sequence[Settlement]], None],
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis_outage = redis_outage
        self.on_settled = on_settled
        self.consumer = f"gw-{secrets.token_hex(6)}"
        """This copy's consumer name in every endpoint's group (the reader's)."""
        self._redis: RedisClient | None = None
        self._reader: Reader | None = None
        self._cancels: CancelListener | None = None
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._sessions: set[AgentSession] = set()
        self._sends: set[asyncio.Task[None]] = set()

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            raise RuntimeError("the gateway is not open")
        return self._redis

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            raise RuntimeError("the gateway is not open")
        return self._reader

    @property
    def sessions(self) -> frozenset[AgentSession]:
        return frozenset(self._sessions)

    async def __aenter__(self) -> Gateway:
        s = self.settings
        self._redis = connect_redis(
            s.redis_url, client_name=s.client_name, max_connections=s.gateway_redis_connections - 2
        )
        self._reader = Reader(
            self._redis,
            self.keys,
            consumer=self.consumer,
            block_ms=s.block_ms,
            lease_ms=s.lease_ms,
            outage=self.redis_outage,
        )
        self._cancels = CancelListener(
            self._redis, self.keys, None, on_cancel=self._on_cancel, outage=self.redis_outage
        )
        self._stopped.clear()
        self._background = [
            asyncio.create_task(self._reader.run(self._stopped), name="gateway-reader"),
            asyncio.create_task(self._listen(), name="gateway-cancels"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopped.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._cancels is not None:
            await self._cancels.stop()
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._reader = self._cancels = None

    async def _listen(self) -> None:
        """Subscribe to every endpoint's cancel channel, waiting out an outage."""
        cancels = self._cancels
        assert cancels is not None
        await retry(cancels.start, transient=redis_unavailable, outage=self.redis_outage)

    # -- sessions --------------------------------------------------------------------------

    async def serve(self, connection: ServerConnection, endpoint_id: str, name: str) -> None:
        """Serve one agent connection of ``endpoint_id`` until it closes."""
        await AgentSession(self, connection, endpoint_id, name).serve()

    def attach(self, session: AgentSession) -> None:
        self._sessions.add(session)
        self.reader.add(session)

    def detach(self, session: AgentSession) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            self.reader.remove(session)

    def _on_cancel(self, task_id: str) -> None:
        for session in self._sessions:
            frame = session.ledger.cancel([task_id])
            if frame is not None:
                log.info(
                    "forwarding the cancel of task %s to agent %s", task_id, session.ledger.agent
                )
                task = asyncio.create_task(session.send_quietly(frame))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def drain(self, *, timeout_s: float) -> None:
        """Tell every agent this copy is going away (``drain``), and wait up to
        ``timeout_s`` for them to close: they reconnect to another copy, or to this one
        once it is back, keeping the tasks they run."""
        sessions = list(self._sessions)
        if not sessions:
            return
        log.info("asking %d agents to drain", len(sessions))
        await asyncio.gather(*(session.drain() for session in sessions))
        closed = [asyncio.ensure_future(s.connection.wait_closed()) for s in sessions]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closed), timeout_s)
        for waiting in closed:
            waiting.cancel()
