"""The completion writer: what one batch writes, and that a batch is one round trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from endpoint_agent.results import Completion, ResultWriter
from endpoint_agent.worker import Outcome
from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import error_record
from sdk.serialize import serialize
from sdk.states import TaskState


async def test_completions_added_together_are_written_in_one_batch(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    stream = keys.endpoint_tasks("ep-1")
    await aredis.xgroup_create(stream, AGENT_GROUP, id="0", mkstream=True)
    for task_id in ("t1", "t2", "t3"):
        await aredis.xadd(stream, {"task_id": task_id})
        await aredis.hset(keys.task(task_id), mapping={"task_id": task_id, "state": "running"})
    read: Any = await aredis.xreadgroup(AGENT_GROUP, "agent-1", {stream: ">"}, count=10)
    entry_ids = [entry_id for entry_id, _ in read[0][1]]
    batches: list[list[str]] = []

    def written(batch: Sequence[Completion]) -> None:
        batches.append([c.task_id for c in batch])

    writer = ResultWriter(aredis, keys, "ep-1", result_ttl_s=60, on_written=written)
    record = error_record("ValueError", "bad")
    writer.add(Completion(entry_ids[0], "t1", "g1", Outcome.success(serialize(1))))
    writer.add(Completion(entry_ids[1], "t2", "g1", Outcome.failure(record)))
    writer.add(Completion(entry_ids[2], "t3", "g1", None))  # skipped: only acknowledged
    await writer.drain()

    assert batches == [["t1", "t2", "t3"]]
    t1, t2, t3 = [await aredis.hgetall(keys.task(t)) for t in ("t1", "t2", "t3")]
    assert (t1["state"], t1["result"]) == (TaskState.SUCCESS, serialize(1))
    assert (t2["state"], json.loads(t2["exception"])) == (TaskState.FAILED, record)
    assert t3 == {"task_id": "t3", "state": "running"}
    assert 0 < await aredis.ttl(keys.task("t1")) <= 60
    notices: Any = await aredis.xrange(keys.task_group_results("g1"))
    assert [f for _, f in notices] == [
        {"task_id": "t1", "state": "success"},
        {"task_id": "t2", "state": "failed"},
    ]
    assert 0 < await aredis.ttl(keys.task_group_results("g1")) <= 60
    assert await aredis.xlen(stream) == 0
    assert (await aredis.xpending(stream, AGENT_GROUP))["pending"] == 0
