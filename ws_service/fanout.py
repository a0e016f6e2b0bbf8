"""One reader per ws_service copy: every subscription's results, read by one blocked ``XREAD``.

A subscription (one client connection, one task group, a cursor) does not read Redis itself.
It registers with the copy's :class:`ResultReader`, which reads for all of them:

1. *Wait*: one ``XREAD COUNT batch_max BLOCK block_ms`` over the results stream of every
   subscription that is ready (not still sending its last frames), each stream from the
   oldest cursor (what was sent) among its subscriptions, on a connection of its own. It
   returns at once when any stream holds notices after its cursor, else when one gets some. A new
   subscription, or one that finished sending, whose stream is not in that wait wakes it
   (``CLIENT UNBLOCK``, :func:`~service_common.redis_client.unblock`), so it is read at once.
2. *Fill*: one pipeline of ``HGETALL`` for the notices that do not carry their result
   inline (:func:`ws_service.protocol.needs_task_hash`), over every subscription at once.
3. *Send*: each subscription's notices after its own cursor leave as ``results`` frames,
   sent by a task of the subscription's own, so a slow client delays only itself: while its
   frames are in flight its stream is left out of the wait (backpressure by cursor: nothing
   piles up in memory), and it rejoins once they are handed to its connection.

Cost and bound: one ``XREAD`` round trip per round for all subscriptions together, plus one
pipeline round trip when some notice needs its task hash. The results side of a copy holds
at most :data:`REDIS_CONNECTIONS` Redis connections (the wait, and a pool of two for the
hashes and the wakes), whatever the number of clients and subscriptions. The copy's gateway
holds ``gateway_redis_connections`` more (:mod:`ws_service.gateway`).

On a Redis Cluster the wait is one per hash slot of the ready streams, each on a connection
of its own (:mod:`service_common.blocking_read`): the bound above holds per slot in use.

**Redis outages** pause every subscription; the reader waits them out with the shared
backoff and resumes each from its own cursor (nothing lost or repeated). An unexpected error
ends the subscriptions of that round with an ``INTERNAL`` error frame (clients subscribe
again) and the reader carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sdk import wire
from sdk.keys import Keys
from sdk.messages import ResultItem, hash_fields
from service_common.blocking_read import BlockingReads
from service_common.redis_client import RedisClient, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage
from ws_service import protocol

log = logging.getLogger(__name__)

POOL_CONNECTIONS = 2
"""The reader's pool: one ``HGETALL`` pipeline at a time, and a ``CLIENT UNBLOCK`` beside it."""
REDIS_CONNECTIONS = POOL_CONNECTIONS + 1
"""The results side's Redis connections in all: the pool and the blocked wait."""

Entries = list[tuple[str, dict[str, str]]]


class Subscription:
    """One subscription's position, shared by the reader and the same-process push.

    ``cursor``: every notice up to it has been sent (stream order). ``read_upto``: the
    reader has taken every notice up to it (and sends those not pushed). ``pushed``: notices
    after ``read_upto`` already pushed out of band, which the reader skips. A pushed item
    carries ``cursor`` (not its own notice id): resubscribing from it then misses nothing
    that other copies settled meanwhile. ``sending``: frames of a read are in flight; the
    reader leaves the subscription out until they are handed to the connection."""

    def __init__(
        self, connection: ServerConnection, task_group_id: str, cursor: str, stream: str
    ) -> None:
        self.connection = connection
        self.task_group_id = task_group_id
        self.stream = stream
        self.cursor = cursor
        self.read_upto = cursor
        self.pushed: set[str] = set()
        self.sending: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.sending is None

    def read(self, last_id: str) -> None:
        self.read_upto = last_id

    def sent(self, last_id: str) -> None:
        self.cursor = last_id
        upto = stream_id(last_id)
        self.pushed = {nid for nid in self.pushed if stream_id(nid) > upto}

    def offer(self, offered: Sequence[tuple[str, ResultItem]], *, max_frame_bytes: int) -> None:
        """Push now each ``(notice id, item)`` whose notice the reader has not taken yet:
        those of one settle round together, in as few frames as fit (one send)."""
        upto = stream_id(self.read_upto)
        items: list[ResultItem] = []
        for notice_id, item in offered:
            if stream_id(notice_id) <= upto or notice_id in self.pushed:
                continue
            self.pushed.add(notice_id)
            item["cursor"] = self.cursor
            items.append(item)
        if not items:
            return
        frames = protocol.results_frames(self.task_group_id, items, max_frame_bytes=max_frame_bytes)
        task = asyncio.create_task(self._send(frames))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, frames: list[str]) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await self.connection.send(frame)

    def cancel(self) -> None:
        for task in (self.sending, *self._sends):
            if task is not None:
                task.cancel()


class ResultReader:
    """Reads for every :class:`Subscription` :meth:`add` registered; :meth:`run` until
    cancelled (see the module docstring for the round and its cost)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        block_ms: int,
        batch_max: int,
        max_frame_bytes: int,
        outage: Outage,
    ) -> None:
        self._redis = redis
        self._reads = BlockingReads(redis)
        self._keys = keys
        self._block_ms = max(1, block_ms)
        self._batch_max = batch_max
        self._max_frame_bytes = max_frame_bytes
        self._outage = outage
        self._subs: set[Subscription] = set()
        self._changed = asyncio.Event()
        self._waiting_on: dict[str, str] | None = None  # stream -> cursor of the wait
        self._unblocking: asyncio.Task[bool] | None = None
        self._farewells: set[asyncio.Task[None]] = set()
        self.rounds = 0
        """Reads so far, for tests and the profile."""
        self.hash_reads = 0
        """Task hashes read so far because a notice did not carry its result."""

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    def add(self, sub: Subscription) -> None:
        self._subs.add(sub)
        self._wake(sub)

    def remove(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.cancel()

    def _wake(self, sub: Subscription) -> None:
        """``sub`` is ready to be read: read it now, interrupting a wait that omits it."""
        self._changed.set()
        waiting_on = self._waiting_on
        if waiting_on is None:
            return
        cursor = waiting_on.get(sub.stream)
        if cursor is not None and stream_id(cursor) <= stream_id(sub.cursor):
            return  # the wait in flight covers it already
        if self._unblocking is None or self._unblocking.done():
            self._unblocking = asyncio.create_task(self._unblock(), name="results-unblock")

    async def _unblock(self) -> bool:
        try:
            return await self._reads.wake()
        except Exception:
            log.exception("waking the results reader failed")
            return False

    async def run(self) -> None:
        """Read until cancelled; Redis outages are waited out, never fatal."""
        failures = 0
        try:
            while True:
                ready = [s for s in self._subs if s.ready]
                if not ready:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                started = self._outage.now()
                try:
                    await self._round(ready)
                except Exception as exc:
                    if not redis_unavailable(exc):
                        log.exception("reading results failed; those subscriptions end")
                        self._fail(ready)
                        continue
                    self._outage.failed(exc, attempt_started=started)
                    failures += 1
                    await asyncio.sleep(DEFAULT_BACKOFF.delay_s(failures))
                    continue
                failures = 0
                self._outage.recovered()
        finally:
            if self._unblocking is not None:
                self._unblocking.cancel()
            for sub in self._subs:
                sub.cancel()
            await self._reads.aclose()

    async def _round(self, ready: list[Subscription]) -> None:
        self.rounds += 1
        cursors: dict[str, str] = {}
        for sub in ready:
            known = cursors.get(sub.stream)
            if known is None or stream_id(sub.cursor) < stream_id(known):
                cursors[sub.stream] = sub.cursor
        self._waiting_on = cursors
        try:
            reply = await self._reads.xread(cursors, count=self._batch_max, block_ms=self._block_ms)
        finally:
            self._waiting_on = None
        found = stream_entries(reply)
        if not found:
            return
        batches: list[tuple[Subscription, Entries, list[protocol.Notice]]] = []
        for sub in ready:
            after = stream_id(sub.cursor)
            entries = [e for e in found.get(sub.stream, ()) if stream_id(e[0]) > after]
            if not entries or sub not in self._subs:
                continue
            # Taken now, before any await: the same-process push then leaves them to us.
            # Should the hashes' read fail, the next round reads again from ``cursor``.
            sub.read(entries[-1][0])
            fresh = [e for e in entries if e[0] not in sub.pushed]
            batches.append((sub, entries, protocol.parse_notices(fresh)))
        hashes = await self._task_hashes(n for _, _, notices in batches for n in notices)
        for sub, entries, notices in batches:
            self._send(sub, entries, notices, hashes)
        # Sends of small frames finish without waiting; let them, so their subscriptions
        # are in the next wait instead of waking it.
        await asyncio.sleep(0)

    async def _task_hashes(self, notices: Any) -> dict[str, dict[str, str]]:
        """The task hash of each notice that does not carry its result, in one pipeline."""
        wanted = list(dict.fromkeys(n.task_id for n in notices if protocol.needs_task_hash(n)))
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in wanted:
                pipe.hgetall(self._keys.task(task_id))
            replies = await pipe.execute()
        self.hash_reads += len(wanted)
        return {t: hash_fields(raw) for t, raw in zip(wanted, replies, strict=True)}

    def _send(
        self,
        sub: Subscription,
        entries: Entries,
        notices: Sequence[protocol.Notice],
        hashes: Mapping[str, dict[str, str]],
    ) -> None:
        last = entries[-1][0]
        items = protocol.result_items(notices, hashes)
        if not items:
            sub.sent(last)  # all pushed already, or no notices: only the cursor moves
            return
        if items[-1]["cursor"] != last:
            # The last entries were pushed already: the frame still moves the client's
            # cursor to the end of what was read.
            items[-1] = {**items[-1], "cursor": last}
        frames = protocol.results_frames(
            sub.task_group_id, items, max_frame_bytes=self._max_frame_bytes
        )
        sub.sending = asyncio.create_task(self._deliver(sub, frames, last))

    async def _deliver(self, sub: Subscription, frames: list[str], last: str) -> None:
        try:
            for frame in frames:
                await sub.connection.send(frame)
        except ConnectionClosed:
            return  # stays out of the reads until its connection handler removes it
        sub.sent(last)
        sub.sending = None
        if sub in self._subs:
            self._wake(sub)

    def _fail(self, subs: list[Subscription]) -> None:
        """End ``subs`` with an ``INTERNAL`` error frame each (they may subscribe again)."""
        for sub in subs:
            if sub not in self._subs:
                continue
            self.remove(sub)
            frame = protocol.error_frame(
                wire.INTERNAL, "this subscription failed; subscribe again", sub.task_group_id
            )
            task = asyncio.create_task(_send_quietly(sub.connection, protocol.encode(frame)))
            self._farewells.add(task)
            task.add_done_callback(self._farewells.discard)


async def _send_quietly(connection: ServerConnection, frame: str) -> None:
    with contextlib.suppress(ConnectionClosed):
        await connection.send(frame)


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``, or ``ms``, or ``0``) as a comparable pair."""
    ms, _, seq = value.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def stream_entries(reply: Any) -> dict[str, Entries]:
    """The entries of an ``XREAD`` reply by stream: ``[[stream, [(id, fields), ...]], ...]``."""
    if not reply:
        return {}
    return {key: [(entry_id, fields) for entry_id, fields in entries] for key, entries in reply}
