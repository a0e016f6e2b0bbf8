"""Cancelling tasks: a queued task never runs, a running one is interrupted by its agent.

For a batch of task ids, two pipelined round trips (and a PUBLISH per running task):

1. per task, one Lua script on the task hash alone (so it runs on Redis Cluster): if the hash
   is the caller's and still ``waiting-for-ep``, set ``state=cancelled`` and ``completed_at``
   and give it the result TTL; either way answer its state, endpoint and task group.
2. per task cancelled in step 1, the completion notice ``XADD keys.task_group_results(gid)
   task_id <tid> state cancelled`` and its ``EXPIRE`` (so WebSocket clients learn of it);
   then per task found ``running``, ``PUBLISH keys.endpoint_cancel(eid)`` a
   :class:`~sdk.messages.CancelNotice` so its agent interrupts it (and writes ``cancelled``).

A cancelled task keeps its stream entry; an agent that reads it skips it, because its start
script leaves terminal tasks alone. A task that is already finished is left as it is.
The outcome per task is ``cancelled``, ``interrupt_requested`` or ``finished``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Literal, TypedDict

from sdk.keys import Keys
from sdk.messages import CancelNotice, hash_script
from sdk.states import TaskState
from service_common.lua import Lua, execute_pipeline
from service_common.redis_client import RedisClient
from web_service.store.models import is_id

Outcome = Literal["cancelled", "interrupt_requested", "finished"]

CANCEL_SCRIPT = hash_script("""
local fields = redis.call('HMGET', KEYS[1], '$user_id', '$state', '$endpoint_id',
  '$task_group_id')
if fields[1] ~= ARGV[1] then
  return false
end
if fields[2] == ARGV[4] then
  redis.call('HSET', KEYS[1], '$state', ARGV[5], '$completed_at', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {1, ARGV[5], fields[3], fields[4]}
end
return {0, fields[2] or '', fields[3] or '', fields[4] or ''}
""")

CANCEL = Lua(CANCEL_SCRIPT, keys=["task"])


class CancelResult(TypedDict):
    """What cancelling one task did."""

    task_id: str
    state: str
    outcome: Outcome


class Canceller:
    def __init__(self, redis: RedisClient, keys: Keys, *, result_ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._result_ttl_s = result_ttl_s

    async def cancel(self, user_id: str, task_ids: Sequence[str]) -> dict[str, CancelResult]:
        """Cancel those of ``task_ids`` that are ``user_id``'s; the others are left out."""
        wanted = [task_id for task_id in dict.fromkeys(task_ids) if is_id(task_id)]
        if not wanted:
            return {}
        now = f"{time.time():.6f}"
        pipe = self._redis.pipeline(transaction=False)
        for task_id in wanted:
            await CANCEL(
                keys=[self._keys.task(task_id)],
                args=[user_id, now, self._result_ttl_s, TaskState.WAITING, TaskState.CANCELLED],
                client=pipe,
            )
        replies = await execute_pipeline(pipe)
        results: dict[str, CancelResult] = {}
        notices = self._redis.pipeline(transaction=False)
        interrupts: list[tuple[str, str]] = []  # (channel, notice)
        for task_id, reply in zip(wanted, replies, strict=True):
            if not reply:
                continue
            changed, state, endpoint_id, task_group_id = reply
            outcome: Outcome = "finished"
            if changed:
                outcome = "cancelled"
                stream = self._keys.task_group_results(task_group_id)
                notices.xadd(stream, {"task_id": task_id, "state": TaskState.CANCELLED.value})
                notices.expire(stream, self._result_ttl_s)
            elif state == TaskState.RUNNING:
                outcome = "interrupt_requested"
                notice: CancelNotice = {"task_id": task_id}
                interrupts.append((self._keys.endpoint_cancel(endpoint_id), json.dumps(notice)))
            results[task_id] = {"task_id": task_id, "state": state, "outcome": outcome}
        if len(notices):
            await notices.execute()
        # Not in the pipeline: a cluster's pipeline refuses PUBLISH (it goes to any one node,
        # which delivers it cluster-wide). Few tasks are running when cancelled at once.
        for channel, message in interrupts:
            await self._redis.publish(channel, message)
        return results
