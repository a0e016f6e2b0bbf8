"""The Redis side of dispatch: the endpoint's task stream, task starts, leases, hand-backs.

* :meth:`TaskStream.ensure_group` creates the consumer group at id ``0`` (so tasks queued
  before the first agent started are delivered), creating the stream if needed.
* :meth:`TaskStream.read` is one ``XREADGROUP ... COUNT n``: the agent asks for exactly as
  many entries as it can take, so other agents of the endpoint get the rest.
* :meth:`TaskStream.claim` is ``XAUTOCLAIM`` of entries idle for a whole lease: entries an
  agent read and then lost (killed, cut off) come back to a live one.
* :meth:`TaskStream.start` moves every task of one read to ``running`` and counts the
  attempt, and answers each task's function and task group (which its entry does not
  carry), in one round trip (one batch script call on one Redis; one per hash slot,
  pipelined, on a cluster). It is safe to retry after a lost reply (a Redis restart): the
  same call's ``started_at`` is recognised and the attempt is not counted twice. A task
  already terminal (say ``cancelled`` while queued) or whose hash is gone is reported as not
  to run; a terminal task whose completion notice may not have been appended (its agent
  died between writing the result and the notice: the hash still has ``notice_pending``) is
  reported so the notice can be appended now.
* :meth:`TaskStream.touch` renews the lease of the entries this agent holds: ``XCLAIM ...
  JUSTID`` to itself resets their idle time (and does not count a delivery). An entry
  another agent has claimed meanwhile is left alone and reported as lost.
* :meth:`TaskStream.hand_back` returns tasks this agent read but will not finish (it is
  draining): their hash goes back to ``waiting-for-ep`` with the attempt taken back, and the
  entry is re-added at the stream's end and acknowledged, atomically (one script on the
  stream key), so any agent reading the stream gets it at once, not after a lease.
* :meth:`TaskStream.holding` checks which entries a reconnecting agent still holds, and
  :meth:`TaskStream.requeue` puts entries read but never started back.
* :func:`read_streams`, :func:`read_blocking` and :func:`claim_streams` read, wait on and
  claim many endpoints' streams at once for one consumer (the gateway's reader).
* :meth:`TaskStream.lookup` gets the code of several functions and checks them against the
  endpoint's allow-list, in one round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import hash_script, stored
from sdk.states import TERMINAL_STATES, TaskState
from service_common.blocking_read import BlockingReads
from service_common.lua import Lua, execute_pipeline, slot_groups
from service_common.redis_client import RedisClient

START_SCRIPT = hash_script("""
local running, now, agent = ARGV[1], ARGV[2], ARGV[3]
local terminal = {}
for i = 5, 4 + tonumber(ARGV[4]) do
  terminal[ARGV[i]] = true
end
local base = 4 + tonumber(ARGV[4])
local out = {}
for k = 1, #KEYS do
  local key, entry = KEYS[k], ARGV[base + k]
  local code, value
  local f = redis.call('HMGET', key, '$state', '$agent', '$started_at', '$attempts', '$entry',
    '$function_id', '$task_group_id')
  local state = f[1]
  if not state then
    code, value = 0, ''
  elseif state == running and f[2] == agent and f[3] == now and f[5] == entry then
    code, value = 1, tonumber(f[4])
  elseif terminal[state] then
    code, value = 0, state
    if redis.call('HEXISTS', key, '$notice_pending') == 1 then
      code = 2
    end
  elseif state == running and f[5] and f[5] ~= entry then
    code, value = 0, state
  else
    redis.call('HSET', key, '$state', running, '$started_at', now, '$agent', agent,
      '$entry', entry)
    code, value = 1, redis.call('HINCRBY', key, '$attempts', 1)
  end
  out[4 * k - 3] = code
  out[4 * k - 2] = value
  out[4 * k - 1] = f[6] or ''
  out[4 * k] = f[7] or ''
end
return out
""")
"""KEYS: task hashes (a batch script: one per task). ARGV: running state, started_at, agent,
the number of terminal states and those states, then the entry id of each task. Returns
four items per task: ``1, attempt`` when the task was moved to running (attempt: the count
after this start), ``2, state`` when it is terminal with its notice pending, ``0, state`` when
it must not run; then its function id and task group id (empty when the hash is gone): the
stream entry does not carry them.

``started_at``, the agent and the entry together name one start: a task
already running under all three was started by an earlier try of this same call (its reply
was lost with the connection), so the retry answers that start again instead of counting a
second attempt.

The task remembers the entry that started it (``entry``): a task running from *another*
entry is not started again from this one, which is then only acknowledged. Such a second
entry is a duplicate, appended by a retried submit that could not know whether its first
try reached Redis (see ``web_service.taskstore.tasks.enqueue``); a redelivery after a lapsed
lease comes from the same entry and is started (and counted) again."""

TOUCH_SCRIPT = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif p[1] then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
"""KEYS: the stream. ARGV: group, consumer, entry ids. Resets the idle time of those
entries still pending for this consumer; returns the ids pending for another consumer. An
entry no longer pending at all was settled while the renewal ran: not lost, not reported."""

RELEASE_SCRIPT = hash_script("""
if redis.call('HGET', KEYS[1], '$state') ~= ARGV[1] or
   redis.call('HGET', KEYS[1], '$attempts') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], '$state', ARGV[3])
redis.call('HINCRBY', KEYS[1], '$attempts', -1)
redis.call('HDEL', KEYS[1], '$started_at', '$agent', '$entry')
return 1
""")
"""KEYS: the task hash. ARGV: running state, the attempt this agent started, the waiting
state. Puts a task this agent started back to waiting; 0 when it is no longer ours. The
entry that started it is forgotten too: the task goes back on the stream as a new entry."""

REQUEUE_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
"""

START = Lua(START_SCRIPT, unit=["task"])
TOUCH = Lua(TOUCH_SCRIPT, keys=["endpoint_tasks"])
RELEASE = Lua(RELEASE_SCRIPT, keys=["task"])
REQUEUE = Lua(REQUEUE_SCRIPT, keys=["endpoint_tasks"])
"""KEYS: the stream. ARGV: group, the old entry id, then the entry's fields and values.
Appends a copy of the entry and settles the old one, atomically."""

TERMINAL = sorted(str(s) for s in TERMINAL_STATES)

HOLDING_FIELDS = stored("state", "attempts", "agent", "function_id", "task_group_id")
"""What :meth:`TaskStream.holding` reads of each task's hash."""

CLAIM_ROUNDS = 10
"""At most this many XAUTOCLAIM calls per sweep (each scans a bounded part of the PEL)."""


def start_stamp() -> str:
    """The ``started_at`` of a start made now (Unix seconds, microseconds)."""
    return f"{time.time():.6f}"


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One entry read from the endpoint's task stream.

    ``function_id`` and ``task_group_id`` are empty on an entry as read (the entry does not
    carry them, see :class:`sdk.messages.StreamEntry`) until :meth:`of_task` fills them in
    from the task's hash (:meth:`TaskStream.start` and :meth:`TaskStream.holding` read them)."""

    entry_id: str
    task_id: str
    function_id: str
    task_group_id: str
    payload: str
    walltime_s: str = ""
    """The task's own walltime, as written on the entry (empty: none)."""
    result_serializers: str = ""
    """The strategy ids its result may be serialized with, comma-separated (empty: any)."""
    fields: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Every field of the entry, kept to re-add it unchanged."""

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> TaskEntry:
        get = fields.get
        return cls(
            entry_id,
            get("task_id", ""),
            "",
            "",
            get("payload", ""),
            get("walltime_s", ""),
            get("result_serializers", ""),
            dict(fields),
        )

    def of_task(self, function_id: str, task_group_id: str) -> TaskEntry:
        """This entry with its task's function and task group (as its hash has them)."""
        # Not dataclasses.replace, which looks the fields up on every call: this runs once
        # per task started, and costs a third of it.
        return TaskEntry(
            self.entry_id,
            self.task_id,
            function_id,
            task_group_id,
            self.payload,
            self.walltime_s,
            self.result_serializers,
            self.fields,
        )

    def result_strategies(self) -> tuple[str, ...]:
        """The entry's ``result_serializers`` as strategy ids, in order (empty: none)."""
        if not self.result_serializers:
            return ()
        return tuple(s for s in self.result_serializers.split(",") if s)

    def task_walltime_s(self) -> float | None:
        """The entry's ``walltime_s`` as seconds (``None``: not set).

        Raises ``ValueError`` when it is set but not a positive number."""
        if not self.walltime_s:
            return None
        try:
            value = float(self.walltime_s)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"walltime_s must be a positive number, not {self.walltime_s!r}")
        return value


@dataclass(frozen=True, slots=True)
class Start:
    """What :meth:`TaskStream.start` found for one entry."""

    run: bool
    attempt: int = 0
    """The task's attempt count including this start (when ``run``)."""
    pending_notice: str = ""
    """The terminal state whose notice must still be appended ("" when none)."""
    function_id: str = ""
    task_group_id: str = ""
    """The task's function and task group, from its hash ("" when the hash is gone)."""


NOT_TO_RUN = Start(run=False)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Function code by id (``None``: none stored) and the ids the allow-list refuses."""

    codes: dict[str, str | None]
    refused: frozenset[str]


class TaskStream:
    """One endpoint's task stream, read by one consumer of the agents' group."""

    def __init__(self, redis: RedisClient, keys: Keys, endpoint_id: str, consumer: str):
        self._redis = redis
        self._keys = keys
        self.key = keys.endpoint_tasks(endpoint_id)
        self._allowed_key = keys.endpoint_allowed_functions(endpoint_id)
        self.consumer = consumer
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        await ensure_group(self._redis, self.key)

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

    async def claim(self, count: int, *, min_idle_ms: int) -> list[TaskEntry]:
        """Take over up to ``count`` entries idle for ``min_idle_ms`` or more (their agent
        is gone). The scan resumes where the last one stopped, so a long pending list is
        covered over successive sweeps."""
        claimed: list[TaskEntry] = []
        for _ in range(CLAIM_ROUNDS):
            try:
                reply: Any = await self._redis.xautoclaim(
                    self.key,
                    AGENT_GROUP,
                    self.consumer,
                    min_idle_ms,
                    start_id=self._claim_cursor,
                    count=count - len(claimed),
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()
                return claimed
            cursor, items = str(reply[0]), reply[1]
            for entry_id, fields in items:
                if fields:  # an entry deleted meanwhile comes back without fields
                    claimed.append(TaskEntry.from_fields(entry_id, fields))
            self._claim_cursor = cursor
            if cursor == "0-0" or len(claimed) >= count:
                break
        return claimed

    async def start(
        self, entries: Sequence[TaskEntry], *, started_at: str = "", take: bool = False
    ) -> list[Start]:
        """Move each entry's task to ``running`` and count the attempt (one round trip).

        ``started_at`` (default: now) names this start: retrying the call with the same
        value after a failure counts no attempt twice (see :data:`START_SCRIPT`). With
        ``take``, the entries (read by another consumer, the gateway's reader) are also
        moved to this consumer in the same round trip (``XCLAIM ... JUSTID``), so their
        lease is this consumer's from now on."""
        if not entries:
            return []
        now = started_at or start_stamp()
        head = [str(TaskState.RUNNING), now, self.consumer, str(len(TERMINAL)), *TERMINAL]
        task_keys = [self._keys.task(entry.task_id) for entry in entries]
        pipe = self._redis.pipeline(transaction=False)
        calls = slot_groups(self._redis, task_keys)
        for call in calls:
            await START(
                keys=[task_keys[i] for i in call],
                args=[*head, *(entries[i].entry_id for i in call)],
                client=pipe,
            )
        if take:
            pipe.xclaim(
                self.key,
                AGENT_GROUP,
                self.consumer,
                0,
                [entry.entry_id for entry in entries],
                justid=True,
            )
        replies = await execute_pipeline(pipe)
        starts: list[Start] = [NOT_TO_RUN] * len(entries)
        for call, reply in zip(calls, replies[: len(calls)], strict=True):
            for n, i in enumerate(call):
                code, value, fid, group = reply[4 * n : 4 * n + 4]
                if int(code) == 1:
                    starts[i] = Start(True, int(value), "", str(fid), str(group))
                elif int(code) == 2:
                    starts[i] = Start(False, 0, str(value), str(fid), str(group))
                else:
                    starts[i] = Start(False, 0, "", str(fid), str(group))
        return starts

    async def touch(self, entry_ids: Sequence[str]) -> list[str]:
        """Renew the lease of ``entry_ids``; returns those another consumer now holds."""
        if not entry_ids:
            return []
        lost: Any = await TOUCH(
            keys=[self.key], args=[AGENT_GROUP, self.consumer, *entry_ids], client=self._redis
        )
        return [str(entry_id) for entry_id in lost]

    async def hand_back(self, entries: Sequence[tuple[TaskEntry, int]]) -> int:
        """Return each (entry, attempt) this agent started to the stream, attempt not
        counted; entries whose task is no longer this agent's are left alone. Two round
        trips; returns how many were handed back."""
        if not entries:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for entry, attempt in entries:
            await RELEASE(
                keys=[self._keys.task(entry.task_id)],
                args=[str(TaskState.RUNNING), str(attempt), str(TaskState.WAITING)],
                client=pipe,
            )
        released = await execute_pipeline(pipe)
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for (entry, _), ok in zip(entries, released, strict=True):
            if int(ok) != 1:
                continue
            flat = [part for pair in entry.fields.items() for part in pair]
            await REQUEUE(keys=[self.key], args=[AGENT_GROUP, entry.entry_id, *flat], client=pipe)
            count += 1
        if count:
            await execute_pipeline(pipe)
        return count

    async def requeue(self, entries: Sequence[TaskEntry]) -> None:
        """Put entries read but never started back at the stream's end, for any reader
        (one round trip)."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            flat = [part for pair in entry.fields.items() for part in pair]
            await REQUEUE(keys=[self.key], args=[AGENT_GROUP, entry.entry_id, *flat], client=pipe)
        await execute_pipeline(pipe)

    async def holding(self, held: Sequence[tuple[str, str, int]]) -> list[TaskEntry | None]:
        """Which of ``held`` (entry id, task id, attempt) this consumer still holds: the
        entry is pending for it, names that task, and the task is ``running`` under that
        attempt and this consumer. Those are renewed at once (``XCLAIM ... JUSTID``) and
        come back with their task's function and group (:meth:`TaskEntry.of_task`); the
        others are ``None``. Two round trips."""
        if not held:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, task_id, _ in held:
            pipe.xrange(self.key, entry_id, entry_id)
            pipe.xpending_range(self.key, AGENT_GROUP, entry_id, entry_id, 1)
            pipe.hmget(self._keys.task(task_id), HOLDING_FIELDS)
        replies = await pipe.execute(raise_on_error=False)
        found: list[TaskEntry | None] = []
        for i, (entry_id, task_id, attempt) in enumerate(held):
            rows, pending, fields = replies[3 * i : 3 * i + 3]
            ok = (
                isinstance(rows, list)
                and len(rows) == 1
                and isinstance(pending, list)
                and len(pending) == 1
                and pending[0].get("consumer") == self.consumer
                and isinstance(fields, list)
                and fields[:3] == [str(TaskState.RUNNING), str(attempt), self.consumer]
            )
            entry = None
            if ok:
                entry = TaskEntry.from_fields(entry_id, rows[0][1] or {})
                entry = entry.of_task(str(fields[3] or ""), str(fields[4] or ""))
            found.append(entry if entry is not None and entry.task_id == task_id else None)
        kept: list[Any] = [entry.entry_id for entry in found if entry is not None]
        if kept:
            await self._redis.xclaim(self.key, AGENT_GROUP, self.consumer, 0, kept, justid=True)
        return found

    async def lookup(self, fetch: Iterable[str], check: Iterable[str]) -> Lookup:
        """The code of the ``fetch`` ids, and which ``check`` ids the endpoint's allow-list
        refuses (none when the endpoint has no allow-list), in one round trip."""
        fetch_ids = list(dict.fromkeys(fetch))
        check_ids = list(dict.fromkeys(check))
        if not fetch_ids and not check_ids:
            return Lookup({}, frozenset())
        pipe = self._redis.pipeline(transaction=False)
        for fid in fetch_ids:
            pipe.get(self._keys.function_code(fid))
        if check_ids:
            pipe.exists(self._allowed_key)
            pipe.smismember(self._allowed_key, check_ids)
        replies = await pipe.execute()
        codes = dict(zip(fetch_ids, replies[: len(fetch_ids)], strict=True))
        refused: frozenset[str] = frozenset()
        if check_ids and int(replies[len(fetch_ids)]):
            members = replies[len(fetch_ids) + 1]
            refused = frozenset(
                fid for fid, member in zip(check_ids, members, strict=True) if not int(member)
            )
        return Lookup(codes, refused)


async def read_streams(
    redis: RedisClient, counts: Mapping[str, int], consumer: str
) -> dict[str, list[TaskEntry]]:
    """One non-blocking ``XREADGROUP ... COUNT n`` per stream (``counts``: stream key ->
    n), pipelined: one round trip for any number of endpoints. A stream whose group is gone
    is recreated and reads nothing this time."""
    pipe = redis.pipeline(transaction=False)
    streams = list(counts)
    for key in streams:
        pipe.xreadgroup(AGENT_GROUP, consumer, {key: ">"}, count=counts[key])
    replies = await pipe.execute(raise_on_error=False)
    found: dict[str, list[TaskEntry]] = {}
    for key, reply in zip(streams, replies, strict=True):
        if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
            await ensure_group(redis, key)
            continue
        if isinstance(reply, Exception):
            raise reply
        entries = [
            TaskEntry.from_fields(entry_id, fields or {})
            for _stream, items in _stream_items(reply)
            for entry_id, fields in items
        ]
        if entries:
            found[key] = entries
    return found


async def read_blocking(
    reads: BlockingReads,
    redis: RedisClient,
    streams: Sequence[str],
    consumer: str,
    *,
    count: int,
    block_ms: int,
) -> dict[str, list[TaskEntry]]:
    """One ``XREADGROUP COUNT count BLOCK block_ms`` over many streams (one per hash slot on
    a Redis Cluster), on ``reads``' connections: returns as soon as any has new entries,
    with up to ``count`` from each. A stream whose group is gone is recreated (through
    ``redis``) and the read finds nothing this time."""
    try:
        reply = await reads.xreadgroup(
            AGENT_GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block_ms=block_ms
        )
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        for key in streams:
            await ensure_group(redis, key)
        return {}
    found: dict[str, list[TaskEntry]] = {}
    for key, items in reply:
        found[key] = [TaskEntry.from_fields(eid, fields or {}) for eid, fields in items]
    return found


async def claim_streams(
    redis: RedisClient,
    claims: Mapping[str, tuple[int, str]],
    consumer: str,
    *,
    min_idle_ms: int,
) -> tuple[dict[str, list[TaskEntry]], dict[str, str]]:
    """One ``XAUTOCLAIM`` per stream (``claims``: stream key -> (count, start cursor)),
    pipelined: entries idle ``min_idle_ms`` or more (their holder is gone) move to
    ``consumer``. Returns the entries claimed and each stream's next cursor."""
    pipe = redis.pipeline(transaction=False)
    streams = list(claims)
    for key in streams:
        count, cursor = claims[key]
        pipe.xautoclaim(key, AGENT_GROUP, consumer, min_idle_ms, start_id=cursor, count=count)
    replies = await pipe.execute(raise_on_error=False)
    found: dict[str, list[TaskEntry]] = {}
    cursors: dict[str, str] = {}
    for key, reply in zip(streams, replies, strict=True):
        if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
            await ensure_group(redis, key)
            cursors[key] = "0-0"
            continue
        if isinstance(reply, Exception):
            raise reply
        cursors[key] = str(reply[0])
        entries = [TaskEntry.from_fields(eid, fields) for eid, fields in reply[1] if fields]
        if entries:
            found[key] = entries
    return found, cursors


async def ensure_group(redis: RedisClient, key: str) -> None:
    """Create the consumer group of the stream ``key`` (and the stream) unless it exists."""
    try:
        await redis.xgroup_create(key, AGENT_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _stream_items(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREADGROUP's reply as (stream, entries) pairs; an empty read is ``[]``."""
    if not reply:
        return []
    return [(stream, list(items)) for stream, items in reply]
