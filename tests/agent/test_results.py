"""The completion writer: what one batch writes, that only the owner of the attempt writes,
and that a notice is appended exactly once."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from endpoint_agent.results import Completion, ResultWriter
from endpoint_agent.worker import Outcome
from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import error_record
from sdk.serialize import serialize
from sdk.states import TaskState
from service_common.retry import Outage


def writer_for(
    aredis: aioredis.Redis,
    keys: Keys,
    *,
    on_written: Callable[[Sequence[Completion]], None] = lambda _: None,
) -> ResultWriter:
    """The writer of agent-1 on endpoint ep-1."""
    outage = Outage("Redis", logger=logging.getLogger(__name__))
    return ResultWriter(
        aredis,
        keys,
        "ep-1",
        agent="agent-1",
        result_ttl_s=60,
        on_written=on_written,
        outage=outage,
    )


async def _queue(aredis: aioredis.Redis, keys: Keys, task_ids: Sequence[str]) -> list[str]:
    """Entries read by agent-1, their tasks running at attempt 1; returns the entry ids."""
    stream = keys.endpoint_tasks("ep-1")
    await aredis.xgroup_create(stream, AGENT_GROUP, id="0", mkstream=True)
    for task_id in task_ids:
        await aredis.xadd(stream, {"task_id": task_id})
        await aredis.hset(
            keys.task(task_id),
            mapping={"task_id": task_id, "state": "running", "attempts": "1", "agent": "agent-1"},
        )
    read: Any = await aredis.xreadgroup(AGENT_GROUP, "agent-1", {stream: ">"}, count=100)
    return [entry_id for entry_id, _ in read[0][1]]


async def test_completions_added_together_are_written_in_one_batch(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    entry_ids = await _queue(aredis, keys, ["t1", "t2", "t3"])
    batches: list[list[str]] = []

    def written(batch: Sequence[Completion]) -> None:
        batches.append([c.task_id for c in batch])

    writer = writer_for(aredis, keys, on_written=written)
    record = error_record("ValueError", "bad")
    printed = Outcome(TaskState.SUCCESS, result=serialize(1), stdout="hello\n", stderr="")
    writer.add(Completion(entry_ids[0], "t1", "g1", printed, attempt=1))
    writer.add(Completion(entry_ids[1], "t2", "g1", Outcome.failure(record), attempt=1))
    writer.add(Completion(entry_ids[2], "t3", "g1", None))  # skipped: only acknowledged
    await writer.drain()

    assert batches == [["t1", "t2", "t3"]]
    t1, t2, t3 = [await aredis.hgetall(keys.task(t)) for t in ("t1", "t2", "t3")]
    assert (t1["state"], t1["result"], t1["stdout"]) == (TaskState.SUCCESS, serialize(1), "hello\n")
    assert "stderr" not in t1 and "notice_pending" not in t1
    assert (t2["state"], json.loads(t2["exception"])) == (TaskState.FAILED, record)
    assert t3 == {"task_id": "t3", "state": "running", "attempts": "1", "agent": "agent-1"}
    assert 0 < await aredis.ttl(keys.task("t1")) <= 60
    notices: Any = await aredis.xrange(keys.task_group_results("g1"))
    assert [f for _, f in notices] == [
        {"task_id": "t1", "state": "success"},
        {"task_id": "t2", "state": "failed"},
    ]
    assert 0 < await aredis.ttl(keys.task_group_results("g1")) <= 60
    stream = keys.endpoint_tasks("ep-1")
    assert await aredis.xlen(stream) == 0
    assert (await aredis.xpending(stream, AGENT_GROUP))["pending"] == 0


async def test_an_outcome_of_a_lost_attempt_is_neither_written_nor_acknowledged(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    # Another agent claimed the task and started attempt 2; attempt 1's result comes late.
    (entry_id,) = await _queue(aredis, keys, ["t1"])
    await aredis.hset(keys.task("t1"), mapping={"attempts": "2", "agent": "agent-2"})
    writer = writer_for(aredis, keys)

    writer.add(Completion(entry_id, "t1", "g1", Outcome.success(serialize(1)), attempt=1))
    await writer.drain()

    fields = await aredis.hgetall(keys.task("t1"))
    assert fields["state"] == TaskState.RUNNING and "result" not in fields
    assert await aredis.xlen(keys.task_group_results("g1")) == 0
    assert (await aredis.xpending(keys.endpoint_tasks("ep-1"), AGENT_GROUP))["pending"] == 1


async def test_a_pending_notice_is_appended_once(aredis: aioredis.Redis, keys: Keys) -> None:
    # An agent stored the outcome and died before appending the notice.
    (entry_id,) = await _queue(aredis, keys, ["t1"])
    await aredis.hset(keys.task("t1"), mapping={"state": "success", "notice_pending": "1"})
    writer = writer_for(aredis, keys)

    writer.add(Completion(entry_id, "t1", "g1", None, pending_notice="success"))
    await writer.drain()

    notices: Any = await aredis.xrange(keys.task_group_results("g1"))
    assert [f for _, f in notices] == [{"task_id": "t1", "state": "success"}]
    assert "notice_pending" not in await aredis.hgetall(keys.task("t1"))
    assert await aredis.xlen(keys.endpoint_tasks("ep-1")) == 0


async def test_a_batch_retried_after_a_lost_reply_is_announced_and_acknowledged_once(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    # An earlier try of the same batch got through before the connection broke: t1 was
    # settled (its notice still pending), t2 settled and announced (only the ack missing).
    e1, e2 = await _queue(aredis, keys, ["t1", "t2"])
    await aredis.hset(keys.task("t1"), mapping={"state": "success", "notice_pending": "1"})
    await aredis.hset(keys.task("t2"), mapping={"state": "success", "result": "kept"})
    await aredis.xadd(keys.task_group_results("g1"), {"task_id": "t2", "state": "success"})
    writer = writer_for(aredis, keys)

    writer.add(Completion(e1, "t1", "g1", Outcome.success(serialize(1)), attempt=1))
    writer.add(Completion(e2, "t2", "g1", Outcome.success(serialize(2)), attempt=1))
    await writer.drain()

    notices: Any = await aredis.xrange(keys.task_group_results("g1"))
    assert [f["task_id"] for _, f in notices] == ["t2", "t1"]  # each exactly once
    assert "notice_pending" not in await aredis.hgetall(keys.task("t1"))
    assert (await aredis.hgetall(keys.task("t2")))["result"] == "kept"  # not written twice
    assert await aredis.xlen(keys.endpoint_tasks("ep-1")) == 0
    assert (await aredis.xpending(keys.endpoint_tasks("ep-1"), AGENT_GROUP))["pending"] == 0


async def test_an_attempt_handed_to_another_agent_is_not_ours_even_at_the_same_count(
    aredis: aioredis.Redis, keys: Keys
) -> None:
    # agent-1 handed t1 back (attempt taken back); agent-2 started it again as attempt 1.
    (entry_id,) = await _queue(aredis, keys, ["t1"])
    await aredis.hset(keys.task("t1"), mapping={"agent": "agent-2"})
    writer = writer_for(aredis, keys)

    writer.add(Completion(entry_id, "t1", "g1", Outcome.success(serialize(1)), attempt=1))
    await writer.drain()

    assert (await aredis.hgetall(keys.task("t1")))["state"] == TaskState.RUNNING
    assert (await aredis.xpending(keys.endpoint_tasks("ep-1"), AGENT_GROUP))["pending"] == 1
