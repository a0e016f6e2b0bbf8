"""The completion writer: every completion ready together is written in one batch.

A batch is two pipelined round trips (docs/internals.md):

1. *Settle*, one Lua script per task on its hash alone: only if the task is still
   ``running`` under the attempt this agent started does it write the terminal state,
   ``completed_at``, ``result`` or ``exception``, ``stdout``/``stderr`` (when not empty)
   and ``notice_pending``, and ``EXPIRE`` the hash. A task that is no longer this agent's
   (its lease lapsed and another agent claimed it) is not written: a late result never
   overwrites anything.
2. *Announce and acknowledge*, for each task written in step 1::

       XADD   task-group results stream * task_id <tid> state <state>
       EXPIRE task-group results stream <result_ttl_s>
       HDEL   task hash notice_pending
       XACK   endpoint stream agents <entry id>
       XDEL   endpoint stream <entry id>

   Entries the agent skipped (a task already terminal when it was read) are only
   acknowledged and deleted; a task found terminal with ``notice_pending`` (its agent died
   between the two steps) gets its notice now. An entry whose task was not written in step
   1 is *not* acknowledged: it belongs to the agent that claimed it.

Delivery contract: a task's entry is acknowledged only after its outcome is stored and its
notice appended, so an agent that dies leaves the entry pending for redelivery; and the
notice is appended exactly once per task, because only the writer of the terminal state
appends it, and a redelivery appends it only while ``notice_pending`` says it is missing.

Batching needs no timer: the first completion schedules a flush on the next turn of the
event loop; everything completed meanwhile, and everything completed while a write is in
flight, shares the next batch. A write that fails is retried a few times; if Redis stays
away the batch is dropped *unacknowledged* (its entries stay pending) and ``on_written`` is
still called so the agent frees the slots.
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

from endpoint_agent.worker import Outcome
from sdk.keys import AGENT_GROUP, Keys
from sdk.states import TaskState

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 5
RETRY_BASE_S = 0.1

SETTLE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] or
   redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'notice_pending', '1', unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
"""KEYS: the task hash. ARGV: running state, attempt, ttl, then field/value pairs.
1 when written, 0 when the task is not running under that attempt."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One stream entry to settle.

    ``outcome`` with the ``attempt`` it belongs to; or no outcome, to only acknowledge the
    entry (``pending_notice``: first append the notice of that terminal state)."""

    entry_id: str
    task_id: str
    task_group_id: str
    outcome: Outcome | None
    attempt: int = 0
    pending_notice: str = ""


class ResultWriter:
    """Batches completions; ``on_written`` hears about each batch once it is done with."""

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
        self._settle = redis.register_script(SETTLE_SCRIPT)
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
                await self._write_once(batch)
                return
            except RedisError:
                if attempt == WRITE_ATTEMPTS:
                    log.exception(
                        "could not write %d completions; their entries stay pending", len(batch)
                    )
                    return
                log.warning("writing %d completions failed, retrying", len(batch), exc_info=True)
                await asyncio.sleep(RETRY_BASE_S * 2**attempt)

    async def _write_once(self, batch: Sequence[Completion]) -> None:
        written = await self._settle_all(batch)
        pipe = self._redis.pipeline(transaction=False)
        groups: set[str] = set()
        settled: list[str] = []
        for c, ok in zip(batch, written, strict=True):
            if not ok:
                log.warning(
                    "task %s is no longer this agent's (its lease lapsed); its outcome is "
                    "dropped and its entry left to the agent that holds it",
                    c.task_id,
                )
                continue
            state = str(c.outcome.state) if c.outcome is not None else c.pending_notice
            if state:
                if c.task_group_id:
                    notices = self._keys.task_group_results(c.task_group_id)
                    pipe.xadd(notices, {"task_id": c.task_id, "state": state})
                    groups.add(notices)
                pipe.hdel(self._keys.task(c.task_id), "notice_pending")
            settled.append(c.entry_id)
        # One EXPIRE per group and one XACK/XDEL for the whole batch, not one per task.
        for notices in groups:
            pipe.expire(notices, self._ttl_s)
        if settled:
            pipe.xack(self._stream, AGENT_GROUP, *settled)
            pipe.xdel(self._stream, *settled)
        await pipe.execute()

    async def _settle_all(self, batch: Sequence[Completion]) -> list[bool]:
        """Step 1: write the outcomes; which completions may be announced and acknowledged."""
        outcomes = [c for c in batch if c.outcome is not None]
        if not outcomes:
            return [True] * len(batch)
        now = f"{time.time():.6f}"
        pipe = self._redis.pipeline(transaction=False)
        for c in outcomes:
            assert c.outcome is not None
            await self._settle(
                keys=[self._keys.task(c.task_id)],
                args=[
                    str(TaskState.RUNNING),
                    str(c.attempt),
                    str(self._ttl_s),
                    *_fields(c.outcome, now),
                ],
                client=pipe,
            )
        replies = iter(await pipe.execute())
        return [c.outcome is None or int(next(replies)) == 1 for c in batch]


def _fields(outcome: Outcome, now: str) -> list[str]:
    fields = ["state", str(outcome.state), "completed_at", now]
    if outcome.result is not None:
        fields += ["result", outcome.result]
    if outcome.exception is not None:
        fields += ["exception", json.dumps(outcome.exception)]
    if outcome.stdout:
        fields += ["stdout", outcome.stdout]
    if outcome.stderr:
        fields += ["stderr", outcome.stderr]
    return fields
