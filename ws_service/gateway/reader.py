"""One reader per ws_service copy: every connected agent's tasks, read in few round trips.

Agents of many endpoints connect to one copy; reading their streams one blocked connection
per agent would make the copy's Redis connections grow with its agents. Instead one task,
:class:`Reader`, reads for all of them, as one consumer of each endpoint's group (the
copy's, ``gw-<random>``):

1. *Claim* (every ``lease_ms / 4`` per endpoint): one pipelined ``XAUTOCLAIM`` per wanting
   endpoint takes entries idle for a whole lease (their agent or gateway is gone).
2. *Read*: one pipelined non-blocking ``XREADGROUP COUNT n`` per wanting endpoint that may
   hold entries, ``n`` the credit its agents on this copy have left
   (:attr:`Wanting.wants`). An endpoint may hold entries until a read of it finds none,
   and again once a wait returns some of it or one of its agents wants more
   (:meth:`Reader.wake`). A wanting agent whose stream had nothing is told so
   (:meth:`Wanting.found_nothing`).
3. *Wait*: when nothing was found, one ``XREADGROUP COUNT m BLOCK block_ms`` over every
   wanting stream at once, ``m`` the smallest want among them, on a connection of its own;
   it returns at once when any of them holds entries (so a stream step 2 skipped is read
   here), else when one gets an entry. An agent whose endpoint is not in that wait wakes
   it (``CLIENT UNBLOCK``), so a new want is read at once.

Entries go to the endpoint's wanting agents on this copy, never more than each one's want;
the agent's session then starts them and moves them to the agent's own consumer (its
lease). An entry read for an agent that left meanwhile goes back to the stream's end.

Cost: one round trip per round for all endpoints together (reading only those that may hold
entries: a copy serving many quiet endpoints reads the busy ones, not all of them, each
round), and at most two Redis connections (the wait and one pool connection at a time)
whatever the number of agents.
On a Redis Cluster the wait is one per hash slot of the wanting streams, each on a
connection of its own (:mod:`service_common.blocking_read`).

**Redis outages** are waited out with the shared backoff; the loop never exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from sdk.keys import Keys
from service_common.blocking_read import BlockingReads
from service_common.redis_client import RedisClient, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage, wait_or_stop
from service_common.tasks.stream import (
    TaskEntry,
    TaskStream,
    claim_streams,
    ensure_group,
    read_blocking,
    read_streams,
)

log = logging.getLogger(__name__)


class Wanting(Protocol):
    """What the reader needs of an agent's session."""

    @property
    def endpoint_id(self) -> str: ...

    @property
    def wants(self) -> int:
        """Tasks the agent may still be sent (credit not yet used or reserved)."""
        ...

    def deliver(self, entries: list[TaskEntry]) -> None:
        """Take ``entries`` (at most :attr:`wants`) to start and send."""
        ...

    def found_nothing(self) -> None:
        """A read for this agent's want found its endpoint's stream empty."""
        ...


class Reader:
    """Reads for every session :meth:`add` registered; :meth:`run` until stopped."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        consumer: str,
        block_ms: int,
        lease_ms: int,
        outage: Outage,
    ) -> None:
        self._redis = redis
        self._reads = BlockingReads(redis)
        self._keys = keys
        self.consumer = consumer
        self._block_ms = max(1, block_ms)
        self._lease_ms = lease_ms
        self._outage = outage
        self._sessions: dict[str, list[Wanting]] = {}  # by endpoint id
        self._streams: dict[str, TaskStream] = {}  # by endpoint id, ever served
        self._by_key: dict[str, str] = {}  # stream key -> endpoint id, ever served
        self._ready: set[str] = set()  # endpoints whose group exists
        self._maybe: set[str] = set()  # endpoints that may hold entries (step 2 reads them)
        self._claim_at: dict[str, float] = {}
        self._claim_cursor: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._generation = 0
        self._waiting_on: frozenset[str] | None = None  # endpoints of the wait in flight
        self._wait_count = 0  # what the wait in flight takes of each of them
        self._unblocking: asyncio.Task[None] | None = None
        self.rounds = 0
        """Read rounds so far (claims, reads and waits), for tests and the profile."""

    def add(self, session: Wanting) -> None:
        eid = session.endpoint_id
        if eid not in self._streams:
            self._streams[eid] = TaskStream(self._redis, self._keys, eid, self.consumer)
            self._by_key[self._keys.endpoint_tasks(eid)] = eid
        self._sessions.setdefault(eid, []).append(session)
        self.wake(session)

    def remove(self, session: Wanting) -> None:
        eid = session.endpoint_id
        sessions = self._sessions.get(eid, [])
        with contextlib.suppress(ValueError):
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(eid, None)

    def wake(self, session: Wanting) -> None:
        """``session`` wants more: read for it now (interrupting a wait that omits it)."""
        self._maybe.add(session.endpoint_id)
        self._generation += 1
        self._changed.set()
        waiting_on = self._waiting_on
        if waiting_on is not None and session.endpoint_id not in waiting_on:
            self._cut_wait_short()

    def wants_less(self, session: Wanting) -> None:
        """``session`` wants fewer tasks than before (its agent withdrew credit): a wait that
        would take more of its endpoint than it now wants is cut short, so the next one
        asks for what is wanted. Else the surplus it brings would be read only to go back
        to the stream (a round trip and a new entry per task)."""
        self._generation += 1  # a read in flight asked with the old want: read again
        eid = session.endpoint_id
        if self._waiting_on is None or eid not in self._waiting_on:
            return
        if sum(s.wants for s in self._sessions.get(eid, [])) < self._wait_count:
            self._cut_wait_short()

    def _cut_wait_short(self) -> None:
        """End the wait in flight (``CLIENT UNBLOCK``), once however many ask meanwhile."""
        if self._unblocking is None or self._unblocking.done():
            self._unblocking = asyncio.create_task(self._unblock(), name="gateway-unblock")

    async def _unblock(self) -> None:
        try:
            await self._reads.wake()
        except Exception:
            log.exception("waking the gateway's reader failed")

    def _wants(self) -> dict[str, int]:
        wants: dict[str, int] = {}
        for eid, sessions in self._sessions.items():
            n = sum(s.wants for s in sessions)
            if n > 0:
                wants[eid] = n
        return wants

    async def run(self, stopped: asyncio.Event) -> None:
        """Read for the sessions until ``stopped``; Redis outages are waited out."""
        failures = 0
        try:
            while not stopped.is_set():
                wants = self._wants()
                if not wants:
                    self._changed.clear()
                    waiting = asyncio.ensure_future(self._changed.wait())
                    stopping = asyncio.ensure_future(stopped.wait())
                    try:
                        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiting.cancel()
                        stopping.cancel()
                    continue
                started = self._outage.now()
                try:
                    await self._round(wants)
                except Exception as exc:
                    if redis_unavailable(exc):
                        self._outage.failed(exc, attempt_started=started)
                    else:
                        log.exception("the gateway's read failed; retrying")
                    failures += 1
                    await wait_or_stop(DEFAULT_BACKOFF.delay_s(failures), stopped)
                    continue
                failures = 0
                self._outage.recovered()
        finally:
            if self._unblocking is not None:
                self._unblocking.cancel()
            await self._reads.aclose()

    async def _round(self, wants: dict[str, int]) -> None:
        self.rounds += 1
        generation = self._generation
        for eid in wants:
            if eid not in self._ready:
                await ensure_group(self._redis, self._keys.endpoint_tasks(eid))
                self._ready.add(eid)
        now = time.monotonic()
        due = {eid: n for eid, n in wants.items() if now >= self._claim_at.get(eid, 0.0)}
        if due:
            claims = {
                self._keys.endpoint_tasks(eid): (n, self._claim_cursor.get(eid, "0-0"))
                for eid, n in due.items()
            }
            claimed, cursors = await claim_streams(
                self._redis, claims, self.consumer, min_idle_ms=self._lease_ms
            )
            for key, cursor in cursors.items():
                self._claim_cursor[self._by_key[key]] = cursor
                self._claim_at[self._by_key[key]] = now + self._lease_ms / 4000
            if claimed:
                log.info("claimed %d tasks whose lease lapsed", sum(map(len, claimed.values())))
                await self._distribute(claimed)
                return
        counts = {
            self._keys.endpoint_tasks(eid): n for eid, n in wants.items() if eid in self._maybe
        }
        found = await read_streams(self._redis, counts, self.consumer) if counts else {}
        for key in counts:
            if not found.get(key):
                eid = self._by_key[key]
                self._maybe.discard(eid)
                for session in self._sessions.get(eid, []):
                    if session.wants > 0:
                        session.found_nothing()
        if found:
            await self._distribute(found)
            return
        if generation != self._generation:
            return  # a want changed while reading: read again before waiting
        await self._wait(wants, now)

    async def _wait(self, wants: dict[str, int], now: float) -> None:
        next_claim_s = min(self._claim_at.get(eid, now) for eid in wants) - time.monotonic()
        block_ms = max(1, min(self._block_ms, int(next_claim_s * 1000) + 1))
        self._waiting_on = frozenset(wants)
        self._wait_count = min(wants.values())
        try:
            found = await read_blocking(
                self._reads,
                self._redis,
                [self._keys.endpoint_tasks(eid) for eid in wants],
                self.consumer,
                count=self._wait_count,
                block_ms=block_ms,
            )
        finally:
            self._waiting_on = None
        self._maybe.update(self._by_key[key] for key in found)  # a wait takes at most m of each
        await self._distribute(found)

    async def _distribute(self, found: Mapping[str, list[TaskEntry]]) -> None:
        """Hand entries to the endpoint's wanting sessions, the longest-waiting first;
        entries nobody wants now (their agent left) go back to the stream."""
        leftovers: list[tuple[TaskStream, list[TaskEntry]]] = []
        for key, entries in found.items():
            eid = self._by_key[key]
            sessions = self._sessions.get(eid, [])
            rest = list(entries)
            for session in list(sessions):
                if not rest:
                    break
                n = min(session.wants, len(rest))
                if n <= 0:
                    continue
                session.deliver(rest[:n])
                rest = rest[n:]
                sessions.remove(session)  # fed: to the back of the line
                sessions.append(session)
            if rest:
                leftovers.append((self._streams[eid], rest))
        for stream, rest in leftovers:
            log.info("%d tasks read for agents that left go back to the stream", len(rest))
            await stream.requeue(rest)
