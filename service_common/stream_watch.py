"""One blocked ``XREAD`` per process for every caller waiting on a stream: :class:`StreamWatcher`.

A long poll waits for completion notices on a task group's results stream. Giving each
waiting request a blocked Redis connection of its own would make a copy's connections grow
with its waiting clients; instead one task reads for all of them:

1. A caller opens a :class:`Watch` on some streams, each from a cursor (an entry id; only
   entries after it count), and awaits :meth:`Watch.wait`.
2. The watcher's loop sends one ``XREAD COUNT n BLOCK block_ms`` over every watched stream,
   each from the oldest cursor any watch holds on it, on a connection of its own, and hands
   what it reads to every watch of that stream (each only the entries after its own
   cursor, which then advances).
3. A watch that names a stream missing from the read in flight, or a cursor older than the
   one the read uses, wakes it (``CLIENT UNBLOCK``) so the next read covers it at once.

Cost: one Redis connection for the reads and, per new watch that needs it, one
``CLIENT UNBLOCK`` on the caller's pool, whatever the number of waiting callers. On a Redis
Cluster the read is one per hash slot of the watched streams, each on a connection of its own
(:mod:`service_common.blocking_read`).

**Redis outages** are waited out with the shared backoff; the loop never exits on its own,
and watches simply see nothing until Redis is back (their callers' deadlines still end them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from service_common.blocking_read import BlockingReads
from service_common.redis_client import RedisClient, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, wait_or_stop

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
"""A stream entry: its id and its fields."""


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a pair that sorts as Redis orders ids (``"5-1" < "10-0"``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Watch:
    """Entries that arrive on some streams after their cursors; see :meth:`wait`."""

    def __init__(self, watcher: StreamWatcher, cursors: Mapping[str, str]) -> None:
        self._watcher = watcher
        self.cursors = dict(cursors)
        """Per stream, the id of the last entry this watch has seen."""
        self._entries: list[tuple[str, Entry]] = []
        self._arrived = asyncio.Event()

    def _offer(self, stream: str, entries: list[Entry]) -> None:
        after = entry_key(self.cursors[stream])
        fresh = [e for e in entries if entry_key(e[0]) > after]
        if fresh:
            self.cursors[stream] = fresh[-1][0]
            self._entries.extend((stream, e) for e in fresh)
            self._arrived.set()

    async def wait(self, timeout_s: float) -> list[tuple[str, Entry]]:
        """The ``(stream, entry)`` pairs that arrived since the last call, waiting up to
        ``timeout_s`` for the first; ``[]`` when none came in time."""
        if not self._entries and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
        entries, self._entries = self._entries, []
        self._arrived.clear()
        return entries

    def close(self) -> None:
        self._watcher._remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class StreamWatcher:
    """Reads every stream its watches name; :meth:`run` until stopped.

    ``redis`` is the caller's client: the reads get connections of their own to its servers,
    and the wakes go through it."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        block_ms: int = 5000,
        count: int = 1000,
    ) -> None:
        self._reads = BlockingReads(redis)
        self._block_ms = max(1, block_ms)
        self._count = count
        self._watches: dict[str, set[Watch]] = {}
        self._changed = asyncio.Event()
        self._reading: dict[str, tuple[int, int]] | None = None  # stream -> cursor in flight
        self._unblocking: asyncio.Task[None] | None = None
        self.reads = 0
        """``XREAD`` commands sent so far, for tests and the profile."""

    @property
    def watches(self) -> int:
        """Watches open now."""
        return len({watch for watches in self._watches.values() for watch in watches})

    def reading_all(self) -> bool:
        """True while a read is in flight that covers every open watch from its cursor."""
        reading = self._reading
        return reading is not None and all(
            stream in reading and reading[stream] <= entry_key(cursor)
            for stream, cursor in self._cursors().items()
        )

    def watch(self, cursors: Mapping[str, str]) -> Watch:
        """A watch of ``cursors`` (stream -> the id after which entries count); close it
        (or use it in ``with``) once done."""
        watch = Watch(self, cursors)
        for stream in cursors:
            self._watches.setdefault(stream, set()).add(watch)
        self._changed.set()
        reading = self._reading
        if reading is not None and any(
            stream not in reading or entry_key(cursor) < reading[stream]
            for stream, cursor in cursors.items()
        ):
            if self._unblocking is None or self._unblocking.done():
                self._unblocking = asyncio.create_task(self._unblock(), name="stream-unblock")
        return watch

    def _remove(self, watch: Watch) -> None:
        for stream in watch.cursors:
            watches = self._watches.get(stream)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[stream]

    async def _unblock(self) -> None:
        try:
            await self._reads.wake()
        except Exception:
            log.exception("waking the stream watcher failed")

    def _cursors(self) -> dict[str, str]:
        """Per watched stream, the oldest cursor a watch of it holds."""
        cursors: dict[str, str] = {}
        for stream, watches in self._watches.items():
            cursors[stream] = min((w.cursors[stream] for w in watches), key=entry_key)
        return cursors

    async def run(self, stopped: asyncio.Event) -> None:
        """Read for the watches until ``stopped``; Redis outages are waited out."""
        failures = 0
        try:
            while not stopped.is_set():
                cursors = self._cursors()
                if not cursors:
                    self._changed.clear()
                    await _first(self._changed.wait(), stopped.wait())
                    continue
                try:
                    await self._read(cursors)
                except Exception as exc:
                    if not redis_unavailable(exc):
                        log.exception("the stream watcher's read failed; retrying")
                    failures += 1
                    await wait_or_stop(DEFAULT_BACKOFF.delay_s(failures), stopped)
                    continue
                failures = 0
        finally:
            if self._unblocking is not None:
                self._unblocking.cancel()
            await self._reads.aclose()

    async def _read(self, cursors: dict[str, str]) -> None:
        self._reading = {stream: entry_key(cursor) for stream, cursor in cursors.items()}
        self.reads += 1
        try:
            reply = await self._reads.xread(cursors, count=self._count, block_ms=self._block_ms)
        finally:
            self._reading = None
        for stream, entries in reply:
            for watch in list(self._watches.get(stream, ())):
                watch._offer(stream, entries)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
