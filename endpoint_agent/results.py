"""The completion writer: every completion ready together is written in one batch.

A batch is settled by :class:`service_common.tasks.settle.Settler` (two pipelined round
trips; its docstring states what is written and the delivery contract).

Batching needs no timer: the first completion schedules a flush on the next turn of the
event loop; everything completed meanwhile, and everything completed while a write is in
flight, shares the next batch.

**Redis outages.** A write that fails because Redis is away is retried with the shared
backoff (:mod:`service_common.retry`) until Redis is back, however long that takes: the
outcomes of tasks that finished during the outage are kept and written then, and the
outage is logged once. Their tasks count as held meanwhile, so the agent reads nothing new.
Only :meth:`ResultWriter.give_up` (a stopping agent whose grace period ran out) ends the
waiting: the batch is then left *unacknowledged* (its entries stay pending and are run
again after their lease). ``on_written`` is called for every batch either way, so the agent
frees the slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from sdk.keys import Keys
from service_common.redis_client import redis_unavailable
from service_common.retry import Outage, retry
from service_common.tasks.settle import Completion, Settler

log = logging.getLogger(__name__)

__all__ = ["Completion", "ResultWriter"]


class ResultWriter:
    """Batches completions; ``on_written`` hears about each batch once it is done with."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        endpoint_id: str,
        *,
        agent: str,
        result_ttl_s: int,
        on_written: Callable[[Sequence[Completion]], None],
        outage: Outage,
    ) -> None:
        self._redis = redis
        self._agent = agent
        self._outage = outage
        self._give_up = asyncio.Event()
        self._settler = Settler(redis, keys, endpoint_id, result_ttl_s=result_ttl_s)
        self._on_written = on_written
        self._pending: list[Completion] = []
        self._flusher: asyncio.Task[None] | None = None

    def add(self, completion: Completion) -> None:
        """Queue one completion; it is written with whatever else completes in this turn."""
        self._pending.append(completion)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="fxbroker-result-writer")

    async def drain(self) -> None:
        """Return once everything added so far has been written (or given up on)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    def give_up(self) -> None:
        """Stop waiting for Redis: a batch that fails from now on is left unacknowledged
        (its tasks run again after their lease) instead of retried until Redis is back."""
        self._give_up.set()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write(batch)
            finally:
                self._on_written(batch)

    async def _write(self, batch: Sequence[Completion]) -> None:
        try:
            await retry(
                lambda: self._write_once(batch),
                transient=redis_unavailable,
                outage=self._outage,
                stop=self._give_up,
            )
        except Exception as exc:
            if redis_unavailable(exc):
                log.warning(
                    "gave up writing %d completions while Redis is away (%s); their entries "
                    "stay pending and run again after their lease",
                    len(batch),
                    exc,
                )
            else:
                log.exception(
                    "could not write %d completions; their entries stay pending", len(batch)
                )

    async def _write_once(self, batch: Sequence[Completion]) -> None:
        await self._settler.write(batch, agent=self._agent)
