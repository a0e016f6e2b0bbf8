"""The completion writer: every completion ready together goes to Redis in one round trip.

For each finished task one non-transactional pipeline carries (docs/internals.md)::

    HSET   task hash  state <success|failed> completed_at <t> result|exception <...>
    EXPIRE task hash  <result_ttl_s>
    XADD   task-group results stream * task_id <tid> state <state>
    EXPIRE task-group results stream <result_ttl_s>
    XACK   endpoint stream agents <entry id>
    XDEL   endpoint stream <entry id>

Entries the agent skipped (a task already terminal when it was read) are only acknowledged
and deleted. Batching needs no timer: the first completion schedules a flush on the next
turn of the event loop; everything completed meanwhile, and everything completed while a
write is in flight, shares the next pipeline.

Delivery contract: a task's stream entry is acknowledged in the same round trip that stores
its result and appends its notice, never before, so an agent that dies leaves the entry
pending for redelivery. A write that fails is retried a few times; if Redis stays away the
batch is dropped *unacknowledged* (its entries stay pending) and ``on_written`` is still
called so the agent frees the slots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from endpoint_agent.worker import Outcome
from sdk.keys import AGENT_GROUP, Keys

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 5
RETRY_BASE_S = 0.1


@dataclass(frozen=True, slots=True)
class Completion:
    """One stream entry to settle: its task's outcome, or ``None`` to only acknowledge it."""

    entry_id: str
    task_id: str
    task_group_id: str
    outcome: Outcome | None


class ResultWriter:
    """Batches completions into pipelines; ``on_written`` hears about each written batch."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        endpoint_id: str,
        *,
        result_ttl_s: int,
        on_written: Callable[[Sequence[Completion]], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._stream = keys.endpoint_tasks(endpoint_id)
        self._ttl_s = result_ttl_s
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

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write(batch)
            finally:
                self._on_written(batch)

    async def _write(self, batch: Sequence[Completion]) -> None:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._pipeline(batch).execute()
                return
            except RedisError:
                if attempt == WRITE_ATTEMPTS:
                    log.exception(
                        "could not write %d completions; their entries stay pending", len(batch)
                    )
                    return
                log.warning("writing %d completions failed, retrying", len(batch), exc_info=True)
                await asyncio.sleep(RETRY_BASE_S * 2**attempt)

    def _pipeline(self, batch: Sequence[Completion]) -> aioredis.client.Pipeline:
        pipe = self._redis.pipeline(transaction=False)
        now = f"{time.time():.6f}"
        for c in batch:
            if c.outcome is not None:
                fields: dict[FieldT, EncodableT] = {
                    "state": str(c.outcome.state),
                    "completed_at": now,
                }
                if c.outcome.result is not None:
                    fields["result"] = c.outcome.result
                if c.outcome.exception is not None:
                    fields["exception"] = json.dumps(c.outcome.exception)
                task_key = self._keys.task(c.task_id)
                pipe.hset(task_key, mapping=fields)
                pipe.expire(task_key, self._ttl_s)
                if c.task_group_id:
                    notices = self._keys.task_group_results(c.task_group_id)
                    pipe.xadd(notices, {"task_id": c.task_id, "state": str(c.outcome.state)})
                    pipe.expire(notices, self._ttl_s)
            pipe.xack(self._stream, AGENT_GROUP, c.entry_id)
            pipe.xdel(self._stream, c.entry_id)
        return pipe
