"""The Redis side of dispatch: the endpoint's task stream, task starts and function code.

* :meth:`TaskStream.ensure_group` creates the consumer group at id ``0`` (so tasks queued
  before the first agent started are delivered), creating the stream if needed.
* :meth:`TaskStream.read` is one ``XREADGROUP ... COUNT n``: the agent asks for exactly as
  many entries as it can take, so other agents of the endpoint get the rest.
* :meth:`TaskStream.start` moves every task of one read to ``running`` in one round trip
  (one Lua script per task, pipelined); a task already terminal (say ``cancelled`` while
  queued) or whose hash is gone is reported as not started and must not run.
* :meth:`TaskStream.fetch_code` gets the code of several functions in one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sdk.keys import AGENT_GROUP, Keys
from sdk.states import TERMINAL_STATES, TaskState

START_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 0
end
for i = 4, #ARGV do
  if state == ARGV[i] then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'started_at', ARGV[2], 'agent', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""
"""KEYS: the task hash. ARGV: running state, started_at, agent, then the terminal states.
Returns 1 when the task was moved to running, 0 when it must not run."""


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One entry read from the endpoint's task stream."""

    entry_id: str
    task_id: str
    function_id: str
    task_group_id: str
    payload: str

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> TaskEntry:
        return cls(
            entry_id=entry_id,
            task_id=fields.get("task_id", ""),
            function_id=fields.get("function_id", ""),
            task_group_id=fields.get("task_group_id", ""),
            payload=fields.get("payload", ""),
        )


class TaskStream:
    """One endpoint's task stream, read by one consumer of the agents' group."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, endpoint_id: str, consumer: str):
        self._redis = redis
        self._keys = keys
        self.key = keys.endpoint_tasks(endpoint_id)
        self.consumer = consumer
        self._start_script = redis.register_script(START_SCRIPT)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        try:
            await self._redis.xgroup_create(self.key, AGENT_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, *, block_ms: int | None) -> list[TaskEntry]:
        """Read up to ``count`` new entries; wait up to ``block_ms`` (``None``: don't wait).

        If the stream or its group vanished (deleted from outside), both are recreated and
        the read returns nothing this time."""
        try:
            reply: Any = await self._redis.xreadgroup(
                AGENT_GROUP, self.consumer, {self.key: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        entries: list[TaskEntry] = []
        for _stream, items in _stream_items(reply):
            for entry_id, fields in items:
                entries.append(TaskEntry.from_fields(entry_id, fields or {}))
        return entries

    async def start(self, entries: Sequence[TaskEntry]) -> list[bool]:
        """Move each entry's task to ``running``; False for those that must not run."""
        if not entries:
            return []
        now = f"{time.time():.6f}"
        terminal = sorted(str(s) for s in TERMINAL_STATES)
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            await self._start_script(
                keys=[self._keys.task(entry.task_id)],
                args=[str(TaskState.RUNNING), now, self.consumer, *terminal],
                client=pipe,
            )
        replies = await pipe.execute()
        return [int(r) == 1 for r in replies]

    async def fetch_code(self, function_ids: Iterable[str]) -> dict[str, str | None]:
        """The stored code of each function id (``None`` where none is stored)."""
        ids = list(dict.fromkeys(function_ids))
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for fid in ids:
            pipe.get(self._keys.function_code(fid))
        codes = await pipe.execute()
        return dict(zip(ids, codes, strict=True))


def _stream_items(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREADGROUP's reply as (stream, entries) pairs; an empty read is ``[]``."""
    if not reply:
        return []
    return [(stream, list(items)) for stream, items in reply]
