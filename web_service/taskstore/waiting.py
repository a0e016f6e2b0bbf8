"""Long polls: read tasks, and if none has finished, wait until one does or the wait ends.

``GET /v1/tasks/{id}?wait_s=N`` and ``POST /v1/tasks/batch_status?wait_s=N`` answer through
:func:`read_tasks_waiting`. The rule is **any**: the answer comes as soon as *any* of the
asked tasks is terminal (at once if one already is), else when ``wait_s`` ends, with every
task's current state either way. Any, not all, because a client that waits for many tasks
wants each result as soon as it exists (to hand it on, to draw progress) and then asks again
about the rest only; "all" would hold finished results back behind the slowest task. A
burst of tasks that finish together still comes back in one answer.

Nothing polls. After a first read finds nothing finished, one pipeline takes the last entry
id of every task group's results stream concerned and reads the tasks again; a task that
finishes after that second read appends its completion notice after that id (the agent and
the canceller write the state before the notice), so a :class:`~service_common.stream_watch.
StreamWatcher` watch from those ids cannot miss it. Notices of other tasks of the same groups
wake the request but not its answer: only a terminal notice of one of its tasks does.

Cost: one round trip when a task is already terminal (a plain read); else three (read, cursor
and re-read in one pipeline, final read; four on a Redis Cluster, whose pipeline reaches its
nodes at once, so the re-read waits for the cursors), plus the process's one shared blocked
``XREAD``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sdk.keys import Keys
from sdk.messages import TaskInfo
from sdk.states import TERMINAL_STATES
from service_common.lua import execute_pipeline, is_cluster
from service_common.redis_client import RedisClient
from service_common.stream_watch import StreamWatcher
from web_service.taskstore.tasks import parse_task_reads, queue_task_reads, read_tasks

MAX_WAIT_S = 30.0
"""The longest a request may ask to wait (``wait_s``); more is refused as invalid."""

_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


def any_finished(found: dict[str, TaskInfo], task_ids: Sequence[str]) -> bool:
    """True when a task is terminal or one of ``task_ids`` is no longer found (expired)."""
    if len(found) < len(task_ids):
        return True
    return any(info["state"] in _TERMINAL for info in found.values())


async def read_tasks_waiting(
    redis: RedisClient,
    keys: Keys,
    watcher: StreamWatcher,
    user_id: str,
    task_ids: Sequence[str],
    *,
    wait_s: float,
) -> dict[str, TaskInfo]:
    """The tasks among ``task_ids`` that exist and are ``user_id``'s, once any is terminal or
    after ``wait_s`` seconds (see the module docstring). Unknown ids are never waited for."""
    found = await read_tasks(redis, keys, user_id, task_ids)
    if wait_s <= 0 or not found or any_finished(found, list(found)):
        return found
    wanted = list(found)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    streams = sorted({keys.task_group_results(info["task_group_id"]) for info in found.values()})
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xrevrange(stream, count=1)
    # One Redis runs a pipeline in order, so the re-read can share the cursors' round trip;
    # a cluster's pipeline reaches its nodes at once, so there it waits for the cursors.
    one_node = not is_cluster(redis)
    reads = await queue_task_reads(pipe, keys, wanted) if one_node else None
    replies = await execute_pipeline(pipe)
    lasts = replies[: len(streams)]
    cursors = {s: (last[0][0] if last else "0-0") for s, last in zip(streams, lasts, strict=True)}
    if reads is not None:
        found = parse_task_reads(reads, replies[len(streams) :], user_id)
    else:
        found = await read_tasks(redis, keys, user_id, wanted)
    if any_finished(found, wanted):
        return found
    mine = set(wanted)
    with watcher.watch(cursors) as watch:
        while (left := deadline - loop.time()) > 0:
            arrived = await watch.wait(left)
            if any(
                fields.get("task_id") in mine and fields.get("state") in _TERMINAL
                for _, (_, fields) in arrived
            ):
                break
    return await read_tasks(redis, keys, user_id, wanted)
