"""Settling outcomes: a batch of completions written in one round trip on one Redis, in
three on a Redis Cluster.

Shared by the endpoint agent's batched writer and the gateway (docs/internals.md). On one
Redis both steps below are one script call per batch (:data:`SETTLE_ONE_NODE`, atomic, so no
``notice_pending`` is ever left between them); on a Redis Cluster, whose scripts take one
slot's keys, they go as follows:

1. *Settle*, one batch script over the tasks' hashes (one call per hash slot on a Redis
   Cluster; one call for the batch on one Redis): per task, only if the task is still
   ``running`` under the attempt the given agent started does it write the terminal state,
   ``completed_at``, ``result`` or ``exception``, ``stdout``/``stderr`` (when not empty)
   and ``notice_pending``, and ``EXPIRE`` the hash. A task that is no longer that agent's
   (its lease lapsed and another agent claimed it) is not written: a late result never
   overwrites anything. A task that agent and attempt already settled (an earlier try of
   the same batch got through before the connection broke) is not written again: it goes
   on to step 2 if its ``notice_pending`` is still there, else only to the acknowledgement.
2. *Announce and acknowledge*, for each task written in step 1, one pipeline of commands
   that each touch one hash slot (so it runs on a Redis Cluster as on one Redis)::

       ANNOUNCE script on the task group's slot, per group: for each task, unless the task
                id is already in the group's ``noticed`` set: SADD it there and
                XADD results stream * task_id <tid> state <state> [inline 1 result ...];
                EXPIRE both
       UNPEND script on the task hashes: HDEL notice_pending (per slot; one call on one Redis)
       XACK + XDEL  endpoint stream <entry ids>             (once per batch)

   A small outcome (result, exception and output together at most
   :data:`INLINE_MAX_CHARS`) rides in its notice (``inline 1`` and the fields the task hash
   has), so ws_service pushes it without reading the task hash; a bigger one, or a notice
   appended for an outcome this call did not carry, names only the task.

   Entries skipped (a task already terminal when read) are only acknowledged and deleted;
   a task found terminal with ``notice_pending`` (its agent died between the two steps)
   gets its notice now. An entry whose task was not written in step 1 is *not*
   acknowledged: it belongs to the agent that claimed it.

Delivery contract: a task's entry is acknowledged only after its outcome is stored and its
notice appended, so an agent that dies leaves the entry pending for redelivery; and the
notice is appended once per task: only the writer of the terminal state appends it, a
redelivery or a retry tries again only while ``notice_pending`` says it may be missing, and
the announce script appends nothing for a task its group's ``noticed`` set already holds.
The script and its set share the group's slot, so a Redis killed between two commands of
step 2 (even ``SIGKILL`` with ``appendfsync always``) leaves a state the retry completes
without appending any notice twice, on one Redis and on a cluster alike.

:meth:`Settler.write` is safe to retry after any failure; it retries nothing itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import ExceptionRecord, hash_script, stored
from sdk.states import TaskState
from service_common.lua import Lua, execute_pipeline, is_cluster, slot_groups
from service_common.redis_client import RedisClient

log = logging.getLogger(__name__)

SETTLE_SCRIPT = hash_script("""
local running, ttl, agent = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local at = 4
for k = 1, #KEYS do
  local key, n = KEYS[k], tonumber(ARGV[at + 1])
  local f = redis.call('HMGET', key, '$state', '$attempts', '$agent')
  if f[2] ~= ARGV[at] or f[3] ~= agent then
    out[k] = 0
  elseif f[1] == running then
    redis.call('HSET', key, '$notice_pending', '1', unpack(ARGV, at + 2, at + 1 + n))
    redis.call('EXPIRE', key, ttl)
    out[k] = 1
  elseif redis.call('HEXISTS', key, '$notice_pending') == 1 then
    out[k] = 1
  else
    out[k] = 2
  end
  at = at + 2 + n
end
return out
""")

SETTLE = Lua(SETTLE_SCRIPT, unit=["task"])
"""KEYS: task hashes (a batch script: one per task). ARGV: running state, ttl, agent, then per
task its attempt, the number of its field/value items and those items. Per task: 1 when
written (or written by an earlier try, its notice still pending), 2 when an earlier try
wrote and announced it (only the acknowledgement may be missing), 0 when the task is no
longer this agent's under that attempt."""

UNPEND_SCRIPT = hash_script("""
for k = 1, #KEYS do
  redis.call('HDEL', KEYS[k], '$notice_pending')
end
return #KEYS
""")

UNPEND = Lua(UNPEND_SCRIPT, unit=["task"])
"""KEYS: task hashes whose notice is appended: each loses ``notice_pending``."""

WRITTEN, ANNOUNCED, NOT_OURS = 1, 2, 0

ANNOUNCE_SCRIPT = """
local ids = {}
local at = 3
for i = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[at])
  local task_id = ARGV[at + 2]
  if redis.call('SADD', KEYS[2], task_id) == 1 then
    ids[i] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + n))
  else
    ids[i] = ''
  end
  at = at + n + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return ids
"""

ANNOUNCE = Lua(ANNOUNCE_SCRIPT, keys=["task_group_results", "task_group_noticed"])
"""KEYS: a task group's results stream and its ``noticed`` set. ARGV: ttl, the number of
notices, then per notice the count of its field/value items followed by them (``task_id``
first). Appends each notice whose task is not yet in the set, adds the task; returns per
notice the id appended, or "" for a task already announced."""

SETTLE_ONE_NODE_SCRIPT = hash_script("""
local running, ttl, agent, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out, acked, touched = {}, {}, {}
local at = 5
for k = 1, (#KEYS - 1) / 3 do
  local key, results, noticed = KEYS[3 * k - 1], KEYS[3 * k], KEYS[3 * k + 1]
  local entry, attempt, nf = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local fields_at = at + 3
  local nn = tonumber(ARGV[fields_at + nf])
  local notice_at = fields_at + nf + 1
  at = notice_at + nn
  local status, pending = 1, attempt == ''
  if not pending then
    local f = redis.call('HMGET', key, '$state', '$attempts', '$agent', '$notice_pending')
    if f[2] ~= attempt or f[3] ~= agent then
      status = 0
    elseif f[1] == running then
      redis.call('HSET', key, unpack(ARGV, fields_at, fields_at + nf - 1))
      redis.call('EXPIRE', key, ttl)
    elseif f[4] then
      pending = true
    else
      status = 2
    end
  end
  local id = ''
  if status == 1 and nn > 0 then
    if redis.call('SADD', noticed, ARGV[notice_at + 1]) == 1 then
      id = redis.call('XADD', results, '*', unpack(ARGV, notice_at, notice_at + nn - 1))
    end
    touched[results] = noticed
    if pending then
      redis.call('HDEL', key, '$notice_pending')
    end
  end
  if status ~= 0 then
    acked[#acked + 1] = entry
  end
  out[2 * k - 1] = status
  out[2 * k] = id
end
for results, noticed in pairs(touched) do
  redis.call('EXPIRE', results, ttl)
  redis.call('EXPIRE', noticed, ttl)
end
if #acked > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
return out
""")

SETTLE_ONE_NODE = Lua(SETTLE_ONE_NODE_SCRIPT, keys=["endpoint_tasks"], one_node=True)
"""One Redis only: both steps at once, for a batch. KEYS: the endpoint's stream, then per
completion its task hash, its group's results stream and ``noticed`` set. ARGV: running
state, ttl, agent, the agents' consumer group, then per completion: its entry id, the attempt
(empty: no outcome, only acknowledge), the number of its hash field/value items and them, the
number of its notice's items and them (none: no notice). Writes what :data:`SETTLE` would,
but no ``notice_pending`` (nothing comes between the write and the notice), appends each
notice unless the group's set has the task, acknowledges and deletes the entries of every
completion still this agent's. Returns two items per completion: its status (as
:data:`SETTLE`'s) and the id of the notice appended now ("" when none)."""

INLINE_MAX_CHARS = 4096
"""Outcomes up to this many characters (result, exception JSON, stdout, stderr together)
are copied into their completion notice."""
INLINE = "inline"
"""The notice field that says the outcome's fields follow in the notice itself."""
INLINE_FIELDS = ("result", "exception", "stdout", "stderr")
"""The outcome fields an inline notice may carry, named as in the task hash."""


class OutcomeFields(Protocol):
    """What a settle writes of an outcome (the agent's ``Outcome``, the protocol's
    ``TaskOutcome``)."""

    @property
    def state(self) -> TaskState: ...
    @property
    def result(self) -> str | None: ...
    @property
    def exception(self) -> ExceptionRecord | None: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Completion:
    """One stream entry to settle.

    ``outcome`` with the ``attempt`` it belongs to; or no outcome, to only acknowledge the
    entry (``pending_notice``: first append the notice of that terminal state)."""

    entry_id: str
    task_id: str
    task_group_id: str
    outcome: OutcomeFields | None
    attempt: int = 0
    pending_notice: str = ""


class Settler:
    """Writes completions of one endpoint's tasks (see the module docstring)."""

    def __init__(
        self, redis: RedisClient, keys: Keys, endpoint_id: str, *, result_ttl_s: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._stream = keys.endpoint_tasks(endpoint_id)
        self._ttl_s = result_ttl_s

    async def write(self, batch: Sequence[Completion], *, agent: str) -> list[int]:
        """Settle ``batch`` for ``agent`` (two round trips); per completion, :data:`WRITTEN`
        (stored and announced now), :data:`ANNOUNCED` (an earlier try did it; acknowledged
        now) or :data:`NOT_OURS` (no longer ``agent``'s: nothing written, not
        acknowledged)."""
        return (await self.write_with_notices(batch, agent=agent))[0]

    async def write_with_notices(
        self,
        batch: Sequence[Completion],
        *,
        agent: str,
        announced: Callable[[list[int], list[str]], None] | None = None,
    ) -> tuple[list[int], list[str]]:
        """:meth:`write`, also returning per completion the id of the completion notice it
        appended to its task group's results stream ("" when none was appended now).

        ``announced`` is called with both lists as soon as the notices are in, before the
        last round trip (``notice_pending`` cleared, entries acknowledged): what it pushes
        reaches a waiting client one round trip sooner. A retry after a failure of that last
        round trip appends no notice again, so it announces nothing twice.

        On one Redis the whole batch is one :data:`SETTLE_ONE_NODE` call per
        :data:`~service_common.lua.MAX_UNITS` completions: one round trip, not three."""
        if not is_cluster(self._redis):
            written, notice_ids = await self._settle_one_node(batch, agent)
            for c, status in zip(batch, written, strict=True):
                if status == NOT_OURS:
                    _log_not_ours(c, agent)
            if announced is not None:
                announced(written, notice_ids)
            return written, notice_ids
        written = await self._settle_all(batch, agent)
        notices: dict[str, list[tuple[int, dict[str, str]]]] = {}  # group -> batch index, notice
        settled: list[str] = []
        unpend: list[str] = []  # task hashes whose notice_pending goes
        for i, (c, status) in enumerate(zip(batch, written, strict=True)):
            if status == NOT_OURS:
                _log_not_ours(c, agent)
                continue
            state = str(c.outcome.state) if c.outcome is not None else c.pending_notice
            if state and status == WRITTEN:
                if c.task_group_id:
                    notice = notice_fields(c.task_id, state, c.outcome)
                    notices.setdefault(c.task_group_id, []).append((i, notice))
                unpend.append(self._keys.task(c.task_id))
            settled.append(c.entry_id)
        # The announcements first: a task's notice_pending goes only once its notice is in.
        announce = self._redis.pipeline(transaction=False)
        for group, items in notices.items():
            args: list[str] = [str(self._ttl_s), str(len(items))]
            for _, notice in items:
                flat = [part for pair in notice.items() for part in pair]
                args += [str(len(flat)), *flat]
            await ANNOUNCE(
                keys=[
                    self._keys.task_group_results(group),
                    self._keys.task_group_noticed(group),
                ],
                args=args,
                client=announce,
            )
        notice_ids = [""] * len(batch)
        if notices:
            for items, ids in zip(notices.values(), await execute_pipeline(announce), strict=True):
                for (i, _), notice_id in zip(items, ids, strict=True):
                    notice_ids[i] = str(notice_id)
        if announced is not None:
            announced(written, notice_ids)
        pipe = self._redis.pipeline(transaction=False)
        for call in slot_groups(self._redis, unpend):
            await UNPEND(keys=[unpend[i] for i in call], args=[], client=pipe)
        if settled:
            pipe.xack(self._stream, AGENT_GROUP, *settled)
            pipe.xdel(self._stream, *settled)
        if len(pipe):
            await execute_pipeline(pipe)
        return written, notice_ids

    async def _settle_one_node(
        self, batch: Sequence[Completion], agent: str
    ) -> tuple[list[int], list[str]]:
        now = f"{time.time():.6f}"
        head = [str(TaskState.RUNNING), str(self._ttl_s), agent, AGENT_GROUP]
        task_keys = [self._keys.task(c.task_id) for c in batch]
        calls = slot_groups(self._redis, task_keys)  # one Redis: runs of at most MAX_UNITS
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            keys = [self._stream]
            args = list(head)
            for i in call:
                c = batch[i]
                keys += [
                    task_keys[i],
                    self._keys.task_group_results(c.task_group_id),
                    self._keys.task_group_noticed(c.task_group_id),
                ]
                fields = [] if c.outcome is None else _fields(c.outcome, now)
                state = str(c.outcome.state) if c.outcome is not None else c.pending_notice
                notice: list[str] = []
                if state and c.task_group_id:
                    items = notice_fields(c.task_id, state, c.outcome).items()
                    notice = [part for pair in items for part in pair]
                attempt = "" if c.outcome is None else str(c.attempt)
                args += [c.entry_id, attempt, str(len(fields)), *fields, str(len(notice)), *notice]
            await SETTLE_ONE_NODE(keys=keys, args=args, client=pipe)
        written = [NOT_OURS] * len(batch)
        notice_ids = [""] * len(batch)
        for call, reply in zip(calls, await execute_pipeline(pipe), strict=True):
            for i, status, notice_id in zip(call, reply[::2], reply[1::2], strict=True):
                written[i], notice_ids[i] = int(status), str(notice_id)
        return written, notice_ids

    async def _settle_all(self, batch: Sequence[Completion], agent: str) -> list[int]:
        """Step 1: write the outcomes."""
        outcomes = [c for c in batch if c.outcome is not None]
        if not outcomes:
            return [WRITTEN] * len(batch)
        now = f"{time.time():.6f}"
        head = [str(TaskState.RUNNING), str(self._ttl_s), agent]
        task_keys = [self._keys.task(c.task_id) for c in outcomes]
        calls = slot_groups(self._redis, task_keys)
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            args: list[str] = list(head)
            for i in call:
                outcome = outcomes[i].outcome
                assert outcome is not None
                fields = _fields(outcome, now)
                args += [str(outcomes[i].attempt), str(len(fields)), *fields]
            await SETTLE(keys=[task_keys[i] for i in call], args=args, client=pipe)
        codes = [NOT_OURS] * len(outcomes)
        for call, reply in zip(calls, await execute_pipeline(pipe), strict=True):
            for i, code in zip(call, reply, strict=True):
                codes[i] = int(code)
        found = iter(codes)
        return [WRITTEN if c.outcome is None else next(found) for c in batch]


def _log_not_ours(c: Completion, agent: str) -> None:
    log.warning(
        "task %s is no longer agent %s's (its lease lapsed); its outcome is dropped and its "
        "entry left to the agent that holds it",
        c.task_id,
        agent,
    )


def notice_fields(task_id: str, state: str, outcome: OutcomeFields | None) -> dict[str, str]:
    """A completion notice: the task and its state, and its outcome when that is small."""
    fields = {"task_id": task_id, "state": state}
    if outcome is None:
        return fields
    inline = {
        name: value
        for name, value in zip(INLINE_FIELDS, _outcome_values(outcome), strict=True)
        if value
    }
    if sum(map(len, inline.values())) <= INLINE_MAX_CHARS:
        fields[INLINE] = "1"
        fields.update(inline)
    return fields


def _outcome_values(outcome: OutcomeFields) -> tuple[str, str, str, str]:
    """The outcome's :data:`INLINE_FIELDS` as the task hash stores them ("" when absent)."""
    exception = json.dumps(outcome.exception) if outcome.exception is not None else ""
    return outcome.result or "", exception, outcome.stdout, outcome.stderr


_STATE, _COMPLETED_AT, _RESULT, _EXCEPTION, _STDOUT, _STDERR = stored(
    "state", "completed_at", "result", "exception", "stdout", "stderr"
)


def _fields(outcome: OutcomeFields, now: str) -> list[str]:
    """The task hash's fields and values for ``outcome`` (by their Redis names)."""
    fields = [_STATE, str(outcome.state), _COMPLETED_AT, now]
    if outcome.result is not None:
        fields += [_RESULT, outcome.result]
    if outcome.exception is not None:
        fields += [_EXCEPTION, json.dumps(outcome.exception)]
    if outcome.stdout:
        fields += [_STDOUT, outcome.stdout]
    if outcome.stderr:
        fields += [_STDERR, outcome.stderr]
    return fields
