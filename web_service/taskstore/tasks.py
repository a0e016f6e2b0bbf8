"""Tasks in Redis: queueing a batch, reading tasks and task-group pages back, function code.

Key names come from :class:`sdk.keys.Keys`, record shapes from :mod:`sdk.messages`; the
flows are the ones ``docs/internals.md`` describes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.messages import (
    TaskInfo,
    TaskSpec,
    hash_script,
    stored,
    task_created_at,
    task_hash,
    task_info,
)
from sdk.states import TaskState
from service_common.lua import AnyPipeline, Lua, execute_pipeline, is_cluster, slot_groups
from service_common.redis_client import RedisClient
from web_service.store.models import is_id

CREATE_TASK_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
"""KEYS: a task hash. ARGV: its fields and values. Writes the hash only if it does not exist
(a retried submit never resets a task its first try queued)."""

CREATE_TASK = Lua(CREATE_TASK_SCRIPT, keys=["task"])

APPEND_ONCE_SCRIPT = """
if redis.call('LPOS', KEYS[1], ARGV[1]) then
  return 0
end
for i = 1, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
"""
"""KEYS: a task group's list. ARGV: the ids of one batch. Appends them unless the batch's
first id is there already (one ``RPUSH`` per thousand ids, so a batch is all there or not)."""

APPEND_ONCE = Lua(APPEND_ONCE_SCRIPT, keys=["task_group_tasks"])


ENQUEUE_SCRIPT = hash_script("""
local mode, pending, answer, idem_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local user, endpoint, group, waiting = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local list_ttl, n_extra = ARGV[9], tonumber(ARGV[10])
local at = 11 + n_extra
local n = (#ARGV - at + 1) / 4
local idem = KEYS[3 + n]
if mode == 'claim' then
  local previous = redis.call('SET', idem, pending, 'NX', 'GET', 'EX', idem_ttl)
  if previous then
    return {0, previous}
  end
elseif mode == 'held' and redis.call('GET', idem) ~= pending then
  return {2, ''}
end
local ids = {}
for k = 1, n do
  local task_id, fid, walltime = ARGV[at], ARGV[at + 1], ARGV[at + 3]
  redis.call('HSET', KEYS[2 + k], '$user_id', user, '$endpoint_id', endpoint,
    '$function_id', fid, '$task_group_id', group, '$state', waiting)
  local entry = {'task_id', task_id, 'payload', ARGV[at + 2]}
  for i = 1, n_extra do
    entry[4 + i] = ARGV[10 + i]
  end
  if walltime ~= '' then
    entry[#entry + 1] = 'walltime_s'
    entry[#entry + 1] = walltime
  end
  redis.call('XADD', KEYS[1], '*', unpack(entry))
  ids[k] = task_id
  at = at + 4
end
redis.call('RPUSH', KEYS[2], unpack(ids))
redis.call('EXPIRE', KEYS[2], list_ttl)
if answer ~= '' then
  redis.call('SET', idem, answer, 'XX', 'EX', idem_ttl)
end
return {1, ''}
""")
"""One Redis only. KEYS: the endpoint's stream, the task group's list, the task hashes, then
the Idempotency-Key record when ARGV[1] is not empty. ARGV: the mode (``claim``: ``SET NX
GET`` the record first and queue nothing if it was there; ``held``: queue only while the
record is this request's claim; empty: no key), the claim, the answer to leave in the record
after queueing (empty: none), the record's ttl, then user id, endpoint id, task group id,
waiting state, the list's ttl, the number of the entries' extra items and
them, then per task its id, function id, payload and ``walltime_s`` (empty: none). Writes the
same hashes, entries and list items as :func:`enqueue`'s pipeline, atomically. Returns ``{1,
''}`` when queued, ``{0, record}`` when the claim found ``record``, ``{2, ''}`` when the
claim is no longer this request's."""

ENQUEUE = Lua(ENQUEUE_SCRIPT, keys=["endpoint_tasks", "task_group_tasks"], one_node=True)

_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_task_ids(count: int) -> list[str]:
    """``count`` UUIDv7 (RFC 9562) ids in canonical form, stamped with the time now: the
    Unix milliseconds in the first 48 bits, the fraction of the millisecond in the 12 bits
    after the version (the RFC's method 3), 62 random bits. The task hash stores no creation
    time: :func:`sdk.messages.task_created_at` reads it from the id. One ``os.urandom`` call
    and string slicing, a fifth of the cost of ``uuid`` objects each (a tenth of the submit
    path's time for a batch of thousands)."""
    ms, ns = divmod(time.time_ns(), 1_000_000)
    stamp = f"{ms:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-7{ns * 4096 // 1_000_000:03x}-"
    digits = os.urandom(8 * count).hex()
    ids = []
    for i in range(0, 16 * count, 16):
        h = digits[i : i + 16]
        ids.append(f"{head}{_VARIANT[h[0]]}{h[1:4]}-{h[4:]}")
    return ids


async def enqueue(
    redis: RedisClient,
    keys: Keys,
    *,
    user_id: str,
    endpoint_id: str,
    task_group_id: str,
    tasks: Sequence[TaskSpec],
    task_ids: Sequence[str],
    codes: Mapping[str, str],
    result_ttl_s: int,
    result_strategies: Sequence[str] = (),
    remember: tuple[str, str, int] | None = None,
    retry: bool = False,
    claim: tuple[str, str, int] | None = None,
) -> str | None:
    """Queue ``tasks`` under ``task_ids`` on the endpoint's stream in one pipelined round trip.

    On one Redis (not a cluster, not a ``retry``) the writes are :data:`ENQUEUE` script calls
    (one per :data:`~service_common.lua.MAX_UNITS` tasks): the per-task commands cost the web
    service redis-py's packing and reply parsing each, the script's arguments do not. There
    ``claim`` as ``(key, record, ttl_s)`` also claims an Idempotency-Key in the same round
    trip (``SET NX GET``, see :mod:`web_service.taskstore.idempotency`): when the key holds a
    record already, nothing is queued and that record is returned. Otherwise returns None.

    The pipeline first re-``SET NX``es the code of every function in ``codes`` (so a cache
    that Redis evicted heals before an agent asks for it), then per task writes its hash
    (state ``waiting-for-ep``) and appends its entry to ``keys.endpoint_tasks``, then appends
    the ids to the task group's list and renews that list's TTL. ``result_strategies`` (strategy
    ids to try, in order, for the results) goes on every entry when given. With ``remember`` as
    ``(key, value, ttl_s)`` it finally overwrites the existing ``key`` with ``value`` for
    ``ttl_s`` seconds (the Idempotency-Key record of the batch).

    Contract: when this returns, Redis has acknowledged every write and agents may already be
    running the tasks; entries are appended in submission order, each after its hash (on a
    Redis Cluster in three round trips: hashes, entries, then the Idempotency-Key record).
    The pipeline is not a transaction (a batch spans hash slots): if it raises, part of the
    batch may be queued.
    ``retry`` queues the same ids again after such a failure (an ``Idempotency-Key`` retry,
    which knows the ids its first try chose): each hash is written only if absent
    (:data:`CREATE_TASK`), the ids join the group once (:data:`APPEND_ONCE`), and every entry
    is appended again. Those two scripts go as ``EVAL`` with their source, not by SHA: this
    path runs after a failure, often a Redis restart that emptied the script cache, and an
    ``EVALSHA`` refused there would leave entries queued ahead of their hashes. A task whose
    first entry did reach the stream so has two; the first one started runs it and the other
    is only acknowledged (the start script in ``service_common.tasks.stream`` remembers the
    entry that started a task), so a retried submit runs no task twice.
    """
    if task_ids and (claim is not None or not (retry or isinstance(redis, aioredis.RedisCluster))):
        return await _enqueue_one_node(
            redis, keys, user_id=user_id, endpoint_id=endpoint_id, task_group_id=task_group_id,
            tasks=tasks, task_ids=task_ids, codes=codes, result_ttl_s=result_ttl_s,
            result_strategies=result_strategies, claim=claim, remember=remember,
        )  # fmt: skip
    # One pipeline on one Redis, which runs it in order. A cluster pipeline sends each node
    # its part at once, so there the phases go in turn: the hashes (and the group's list)
    # before the entries that agents read, and the Idempotency-Key record after both.
    cluster = isinstance(redis, aioredis.RedisCluster)
    pipe = redis.pipeline(transaction=False)
    entries = redis.pipeline(transaction=False) if cluster else pipe
    for function_id, code in codes.items():
        pipe.set(keys.function_code(function_id), code, nx=True)
    stream = keys.endpoint_tasks(endpoint_id)
    waiting = TaskState.WAITING.value
    user_key, endpoint_key, function_key, group_key, state_key = stored(
        "user_id", "endpoint_id", "function_id", "task_group_id", "state"
    )
    extra: list[str] = []  # the entry's optional fields, the same for the whole batch
    if result_strategies:
        extra += ["result_serializers", ",".join(result_strategies)]
    # The TaskHash and StreamEntry fields of sdk.messages, as flat argument lists: redis-py's
    # hset(mapping=) and xadd() would build and walk a dict per task (a tenth of the path).
    for task_id, spec in zip(task_ids, tasks, strict=True):
        function_id = spec["function_id"]
        # No task_id (the key holds it), no attempts until the first start counts one
        # (HINCRBY), no creation time (the id has it), names of one character: so the
        # hash's listpack fits the allocator's 192-byte class (sdk.messages.TASK_HASH_NAMES).
        record = [
            user_key, user_id, endpoint_key, endpoint_id, function_key, function_id,
            group_key, task_group_id, state_key, waiting,
        ]  # fmt: skip
        entry = ["task_id", task_id, "payload", spec["payload"], *extra]
        if "walltime_s" in spec:
            entry += ["walltime_s", repr(spec["walltime_s"])]
        if retry:
            await CREATE_TASK(keys=[keys.task(task_id)], args=record, client=pipe, by_source=True)
        else:
            pipe.execute_command("HSET", keys.task(task_id), *record)
        entries.execute_command("XADD", stream, "*", *entry)
    group_tasks = keys.task_group_tasks(task_group_id)
    if retry:
        await APPEND_ONCE(keys=[group_tasks], args=task_ids, client=pipe, by_source=True)
    else:
        pipe.rpush(group_tasks, *task_ids)
    pipe.expire(group_tasks, result_ttl_s)
    if cluster:
        await pipe.execute()
        await entries.execute()
    if remember is not None:
        key, value, ttl_s = remember
        pipe.set(key, value, xx=True, ex=ttl_s)
    await pipe.execute()
    return None


async def _enqueue_one_node(
    redis: RedisClient,
    keys: Keys,
    *,
    user_id: str,
    endpoint_id: str,
    task_group_id: str,
    tasks: Sequence[TaskSpec],
    task_ids: Sequence[str],
    codes: Mapping[str, str],
    result_ttl_s: int,
    result_strategies: Sequence[str],
    claim: tuple[str, str, int] | None,
    remember: tuple[str, str, int] | None,
) -> str | None:
    """:func:`enqueue` on one Redis: one pipeline of :data:`ENQUEUE` calls."""
    pipe = redis.pipeline(transaction=False)
    for function_id, code in codes.items():
        pipe.set(keys.function_code(function_id), code, nx=True)
    extra: list[str] = []
    if result_strategies:
        extra += ["result_serializers", ",".join(result_strategies)]
    idem_key, pending, ttl_s = "", "", 0
    if claim is not None:
        idem_key, pending, ttl_s = claim
    elif remember is not None:
        idem_key, _, ttl_s = remember
    if claim is not None and remember is not None and remember[0] != claim[0]:
        raise ValueError("claim and remember name different Idempotency-Key records")
    head = [
        "", pending, "", str(ttl_s), user_id, endpoint_id, task_group_id,
        TaskState.WAITING.value, str(result_ttl_s),
        str(len(extra)), *extra,
    ]  # fmt: skip
    stream, group_tasks = keys.endpoint_tasks(endpoint_id), keys.task_group_tasks(task_group_id)
    calls = slot_groups(redis, task_ids)  # one Redis: runs of at most MAX_UNITS
    for n, call in enumerate(calls):
        head[0] = ("claim" if n == 0 else "held") if claim is not None else ""
        head[2] = remember[1] if remember is not None and n == len(calls) - 1 else ""
        args = list(head)
        call_keys = [stream, group_tasks]
        for i in call:
            spec = tasks[i]
            walltime = repr(spec["walltime_s"]) if "walltime_s" in spec else ""
            args += [task_ids[i], spec["function_id"], spec["payload"], walltime]
            call_keys.append(keys.task(task_ids[i]))
        if head[0] or head[2]:
            call_keys.append(idem_key)
        await ENQUEUE(keys=call_keys, args=args, client=pipe)
    replies = await execute_pipeline(pipe)
    code, found = replies[len(codes)]
    return str(found) if int(code) == 0 else None


async def store_function_code(redis: RedisClient, keys: Keys, function_id: str, code: str) -> None:
    """Cache a function's code for agents (no TTL; SQL keeps the original)."""
    await redis.set(keys.function_code(function_id), code)


READ_TASKS_SCRIPT = """
local out = {}
for k = 1, #KEYS do
  out[k] = redis.call('HGETALL', KEYS[k])
end
return out
"""

READ_TASKS = Lua(READ_TASKS_SCRIPT, unit=["task"])
"""KEYS: task hashes (a batch script: one per task). Returns each one's ``HGETALL`` (an empty
list for a hash that is gone). A thousand tasks read by one call cost the web service a sixth
of the CPU of a thousand pipelined ``HGETALL``: redis-py packs one command and parses one
reply (in hiredis) instead of a thousand of each."""


@dataclass(frozen=True, slots=True)
class TaskReads:
    """Reads queued by :func:`queue_task_reads`: the ids read, and how many replies of the
    pipeline they take (from where they were queued)."""

    wanted: list[str]
    replies: int
    batched: bool


async def read_tasks(
    redis: RedisClient, keys: Keys, user_id: str, task_ids: Sequence[str]
) -> dict[str, TaskInfo]:
    """The tasks among ``task_ids`` that exist and belong to ``user_id``; one round trip."""
    pipe = redis.pipeline(transaction=False)
    reads = await queue_task_reads(pipe, keys, task_ids)
    if not reads.wanted:
        return {}
    return parse_task_reads(reads, await execute_pipeline(pipe), user_id)


async def queue_task_reads(pipe: AnyPipeline, keys: Keys, task_ids: Sequence[str]) -> TaskReads:
    """Queue on ``pipe`` a read of each task among ``task_ids`` that is a well-formed id
    (hand what this returns and the pipeline's replies from there on to
    :func:`parse_task_reads`). Several tasks on one Redis are read by :data:`READ_TASKS`
    calls; one task, or tasks on a Redis Cluster (where a call holds one slot's keys), by an
    ``HGETALL`` each. Run the pipeline with :func:`~service_common.lua.execute_pipeline`."""
    wanted = [task_id for task_id in task_ids if is_id(task_id)]
    names = [keys.task(task_id) for task_id in wanted]
    if len(names) < 2 or is_cluster(pipe):
        for name in names:
            pipe.hgetall(name)
        return TaskReads(wanted, len(names), batched=False)
    calls = slot_groups(pipe, names)
    for call in calls:
        await READ_TASKS(keys=[names[i] for i in call], args=[], client=pipe)
    return TaskReads(wanted, len(calls), batched=True)


def parse_task_reads(reads: TaskReads, replies: Sequence[Any], user_id: str) -> dict[str, TaskInfo]:
    """The replies of :func:`queue_task_reads`' reads (``replies`` from where they were
    queued): the tasks that exist and are ``user_id``'s."""
    raws: list[Mapping[str, str]]
    if reads.batched:
        raws = [
            dict(zip(flat[::2], flat[1::2], strict=True))
            for reply in replies[: reads.replies]
            for flat in reply
        ]
    else:
        raws = list(replies[: reads.replies])
    found: dict[str, TaskInfo] = {}
    for task_id, raw in zip(reads.wanted, raws, strict=True):
        fields = task_hash(raw)
        if fields.get("user_id") == user_id:
            found[task_id] = task_info(task_id, fields)
    return found


async def read_task(redis: RedisClient, keys: Keys, user_id: str, task_id: str) -> TaskInfo | None:
    """The task if it exists and belongs to ``user_id``."""
    return (await read_tasks(redis, keys, user_id, [task_id])).get(task_id)


async def task_group_page(
    redis: RedisClient, keys: Keys, task_group_id: str, *, offset: int, limit: int
) -> tuple[int, list[tuple[str, str | None]]]:
    """``(total, [(task id, state or None once expired)])`` of one page of a group's tasks.

    The tasks are in submission order; one round trip (the total alone for ``limit`` 0).
    """
    group_tasks = keys.task_group_tasks(task_group_id)
    if limit <= 0:
        return int(await redis.llen(group_tasks)), []
    pipe = redis.pipeline(transaction=False)
    pipe.llen(group_tasks)
    pipe.lrange(group_tasks, offset, offset + limit - 1)
    total, ids = await pipe.execute()
    if not ids:
        return int(total), []
    pipe = redis.pipeline(transaction=False)
    (state_name,) = stored("state")
    for task_id in ids:
        pipe.hget(keys.task(task_id), state_name)
    states = await pipe.execute()
    return int(total), list(zip(cast(list[str], ids), states, strict=True))


SUMMARY_FIELDS = (
    "user_id", "state", "endpoint_id", "function_id", "task_group_id", "started_at",
    "completed_at",
)  # fmt: skip
"""What :func:`recent_tasks` reads of each task hash (never results or output); it adds
``task_id``, which the key holds, and ``created_at`` (Unix seconds), which the id holds."""


async def recent_tasks(
    redis: RedisClient, keys: Keys, user_id: str, task_group_ids: Sequence[str], *, limit: int
) -> list[dict[str, str]]:
    """Up to ``limit`` of the newest tasks of ``task_group_ids`` (given newest first) that
    still exist and are ``user_id``'s, newest first, as :data:`SUMMARY_FIELDS`; two round
    trips whatever the number of groups."""
    if not task_group_ids or limit <= 0:
        return []
    pipe = redis.pipeline(transaction=False)
    for task_group_id in task_group_ids:
        pipe.lrange(keys.task_group_tasks(task_group_id), -limit, -1)
    ids: list[str] = []
    for group_ids in await pipe.execute():
        ids.extend(reversed(cast(list[str], group_ids)))
        if len(ids) >= limit:
            break
    ids = ids[:limit]
    pipe = redis.pipeline(transaction=False)
    names = stored(*SUMMARY_FIELDS)
    for task_id in ids:
        pipe.hmget(keys.task(task_id), names)
    found: list[dict[str, str]] = []
    for task_id, values in zip(ids, await pipe.execute(), strict=True):
        fields = {n: v for n, v in zip(SUMMARY_FIELDS, values, strict=True) if v is not None}
        if fields.get("user_id") == user_id:
            fields["task_id"] = task_id
            created = task_created_at(task_id)
            if created is not None:
                fields["created_at"] = f"{created:.6f}"
            found.append(fields)
    return found
