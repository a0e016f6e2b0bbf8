"""Leases and redelivery through the gateway: tasks of a lost agent are claimed again with
the attempt counted, up to the gateway's max_attempts; a stopping agent hands its tasks back
at once; a kill -9 of an agent process in the middle of 2,000 tasks loses none and
duplicates none. Leases are the gateway's (``lease_ms`` of the ws_service copy)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from endpoint_agent import Agent, AgentSettings
from sdk.keys import AGENT_GROUP
from sdk.messages import hash_field, stored, stored_fields
from sdk.states import TaskState
from service_common.tasks.settle import ANNOUNCED, NOT_OURS, WRITTEN, Completion, Settler
from service_common.tasks.stream import Start, TaskEntry, TaskStream
from tests.agent.gateway_stack import (
    GatewayEndpoint,
    GatewayStack,
    agent_settings,
    settings_for,
    ws_url,
)
from tests.agent.helpers import HOLD, Gate, source_code
from tests.amqp.helpers import FakeOutcome

SQUARE = source_code("square", "def square(x):\n    return x * x\n")
HOUR_MS = 3_600_000


async def lose(endpoint: GatewayEndpoint, attempts: int) -> str:
    """A task an agent named ``ghost`` read, started ``attempts`` times, and was lost with:
    its entry pending to ``ghost``, idle for an hour. Returns the entry id."""
    await endpoint.redis.xgroup_create(endpoint.stream, AGENT_GROUP, id="0", mkstream=True)
    read: Any = await endpoint.redis.xreadgroup(
        AGENT_GROUP, "ghost", {endpoint.stream: ">"}, count=1
    )
    ((entry_id, fields),) = read[0][1]
    await endpoint.redis.hset(
        endpoint.keys.task(fields["task_id"]),
        mapping=stored_fields(
            {"state": TaskState.RUNNING, "attempts": str(attempts), "agent": "ghost"}
        ),
    )
    await endpoint.redis.xclaim(
        endpoint.stream, AGENT_GROUP, "ghost", 0, [entry_id], idle=HOUR_MS, justid=True
    )
    return str(entry_id)


async def test_a_lost_agents_task_is_claimed_and_its_attempt_counted(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    square = await endpoint.register(SQUARE)
    task_id = await endpoint.submit(square, 12)
    await lose(endpoint, attempts=1)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    assert await endpoint.result(task_id) == 144
    fields = await endpoint.task(task_id)
    assert (fields["attempts"], fields["agent"]) == ("2", "agent-1")
    assert await endpoint.notices() == [(task_id, TaskState.SUCCESS)]
    await endpoint.assert_settled()


async def test_after_max_attempts_the_task_fails_with_worker_lost(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    square = await endpoint.register(SQUARE)
    task_id = await endpoint.submit(square, 12)
    await lose(endpoint, attempts=3)

    async with Agent(settings_for(endpoint, engine="thread")) as agent:  # the gateway's 3
        await agent.run(burst=True)

    record = await endpoint.failure(task_id)
    assert record["type"] == "WorkerLost"
    assert "lost 3 times (max_attempts is 3)" in record["message"]
    assert await endpoint.notices() == [(task_id, TaskState.FAILED)]
    await endpoint.assert_settled()


async def test_a_result_stored_without_its_notice_is_announced_on_redelivery(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    square = await endpoint.register(SQUARE)
    task_id = await endpoint.submit(square, 3)
    await lose(endpoint, attempts=1)
    # The ghost stored the outcome, then died before appending the notice.
    await endpoint.redis.hset(
        endpoint.keys.task(task_id),
        mapping=stored_fields(
            {"state": TaskState.SUCCESS, "result": "11\n9", "notice_pending": "1"}
        ),
    )

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    fields = await endpoint.task(task_id)
    assert (fields["attempts"], fields["result"]) == ("1", "11\n9")  # not run again
    assert "notice_pending" not in fields
    assert await endpoint.notices() == [(task_id, TaskState.SUCCESS)]
    await endpoint.assert_settled()


async def test_a_task_queued_twice_by_a_retried_submit_runs_once(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """A submit retried after a Redis restart cut its first try may append a task's entry
    twice; the task runs from the first entry started and the other is only acknowledged."""
    square = await endpoint.register(SQUARE)
    task_id = await endpoint.submit(square, 5)
    other = await endpoint.submit(square, 6)
    read: Any = await endpoint.redis.xrange(endpoint.stream)
    fields = next(f for _, f in read if f["task_id"] == task_id)
    await endpoint.redis.xadd(endpoint.stream, fields)  # the retry's copy
    assert await endpoint.redis.xlen(endpoint.stream) == 3

    async with Agent(settings_for(endpoint, engine="thread")) as agent:
        await agent.run(burst=True)

    assert await endpoint.result(task_id) == 25
    assert await endpoint.result(other) == 36
    assert (await endpoint.task(task_id))["attempts"] == "1"  # started once, not twice
    assert sorted(await endpoint.notices()) == sorted(
        [(task_id, TaskState.SUCCESS), (other, TaskState.SUCCESS)]
    )
    await endpoint.assert_settled()


async def test_renewing_a_lease_resets_idle_time_only_for_entries_still_held(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    square = await endpoint.register(SQUARE)
    await endpoint.submit_many(square, [((1,), {}), ((2,), {})])
    mine = await lose(endpoint, attempts=1)
    read: Any = await endpoint.redis.xreadgroup(AGENT_GROUP, "other", {endpoint.stream: ">"})
    theirs = read[0][1][0][0]
    stream = TaskStream(endpoint.redis, endpoint.keys, endpoint.endpoint_id, "ghost")

    settled = "1-1"  # acknowledged while the renewal ran: pending nowhere, so not lost
    assert await stream.touch([mine, theirs, settled]) == [theirs]

    pending = await endpoint.redis.xpending_range(endpoint.stream, AGENT_GROUP, "-", "+", 10)
    by_id = {p["message_id"]: p for p in pending}
    assert by_id[mine]["consumer"] == "ghost"
    assert int(by_id[mine]["time_since_delivered"]) < HOUR_MS
    assert by_id[mine]["times_delivered"] == 1  # a renewal is not a redelivery
    assert by_id[theirs]["consumer"] == "other"


async def test_one_start_call_answers_each_task_of_its_batch_on_its_own(
    endpoint: GatewayEndpoint,
) -> None:
    """The start script runs once for a whole batch on one Redis: each task still gets its
    own answer, a second entry of a task started from the first (a retried submit's
    duplicate, in the same read) is not started again, and the call retried after a lost
    reply counts no attempt twice."""
    square = await endpoint.register(SQUARE)
    a, b, c, d = await endpoint.submit_many(square, [((i,), {}) for i in range(4)])
    await endpoint.redis.hset(endpoint.keys.task(c), mapping=stored_fields({"state": "cancelled",
                                                              "notice_pending": "1"}))  # fmt: skip
    await endpoint.redis.delete(endpoint.keys.task(d))
    batch = [  # as read: an entry names neither the function nor the group
        TaskEntry(f"1-{i}", task_id, "", "", "")
        for i, task_id in enumerate([a, a, b, c, d], start=1)
    ]
    stream = TaskStream(endpoint.redis, endpoint.keys, endpoint.endpoint_id, "ghost")
    group = endpoint.task_group_id  # the start answers both from the task's hash
    expected = [
        Start(run=True, attempt=1, function_id=square, task_group_id=group),
        Start(run=False, function_id=square, task_group_id=group),
        Start(run=True, attempt=1, function_id=square, task_group_id=group),
        Start(run=False, pending_notice="cancelled", function_id=square, task_group_id=group),
        Start(run=False),  # its hash is gone
    ]
    assert await stream.start(batch, started_at="100.000001") == expected
    assert await stream.start(batch, started_at="100.000001") == expected  # the retry
    for task_id, entry in ((a, "1-1"), (b, "1-3")):
        fields = await endpoint.task(task_id)
        assert (fields["state"], fields["attempts"], fields["entry"]) == ("running", "1", entry)
    assert await stream.start(batch[2:3], started_at="200.000001") == [
        Start(run=True, attempt=2, function_id=square, task_group_id=group)  # a redelivery
    ]  # of the same entry, later: counted


async def test_one_settle_call_writes_announces_and_acknowledges_a_batch(
    endpoint: GatewayEndpoint,
) -> None:
    """On one Redis a batch settles in one script call: outcomes written, notices appended,
    entries acknowledged, except a task that is no longer the agent's; the call retried
    after a lost reply appends no notice twice."""
    square = await endpoint.register(SQUARE)
    ids = await endpoint.submit_many(square, [((i,), {}) for i in range(3)])
    stream = TaskStream(endpoint.redis, endpoint.keys, endpoint.endpoint_id, "ghost")
    await stream.ensure_group()
    read: Any = await endpoint.redis.xreadgroup(AGENT_GROUP, "ghost", {endpoint.stream: ">"})
    entry_of = {fields["task_id"]: entry_id for entry_id, fields in read[0][1]}
    group = (await endpoint.task(ids[0]))["task_group_id"]
    entries = [TaskEntry(entry_of[t], t, square, group, "") for t in ids]
    assert [s.attempt for s in await stream.start(entries)] == [1, 1, 1]
    await endpoint.redis.hset(
        endpoint.keys.task(ids[2]), hash_field("agent"), "other"
    )  # claimed since
    settler = Settler(endpoint.redis, endpoint.keys, endpoint.endpoint_id, result_ttl_s=60)
    batch = [
        Completion(entry_of[t], t, group, FakeOutcome(TaskState.SUCCESS, f"11\n{i}"), 1)
        for i, t in enumerate(ids)
    ]
    written, notices = await settler.write_with_notices(batch, agent="ghost")
    assert written == [WRITTEN, WRITTEN, NOT_OURS]
    assert notices[0] and notices[1] and not notices[2]
    assert await settler.write_with_notices(batch, agent="ghost") == (
        [ANNOUNCED, ANNOUNCED, NOT_OURS],
        ["", "", ""],
    )
    assert sorted(await endpoint.notices()) == sorted((t, TaskState.SUCCESS) for t in ids[:2])
    for t in ids[:2]:
        fields = await endpoint.task(t)
        assert (fields["state"], "notice_pending" in fields) == ("success", False)
        assert 0 < await endpoint.redis.ttl(endpoint.keys.task(t)) <= 60
    pending: Any = await endpoint.redis.xpending_range(endpoint.stream, AGENT_GROUP, "-", "+", 9)
    assert [p["message_id"] for p in pending] == [entry_of[ids[2]]]  # left to its holder


async def test_a_stopping_agent_hands_tasks_back_for_another_at_once(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(3)])
    # Leases of an hour: only a hand-back can move the tasks to the second agent now.
    async with stack.ws(lease_ms=HOUR_MS) as server:
        url = ws_url(server)
        first = agent_settings(endpoint, url, workers=2, consumer="first", drain_grace_s=0)
        second = agent_settings(endpoint, url, engine="thread", workers=3, consumer="second")
        await hand_over(endpoint, gate, task_ids, first, second)

    for task_id in task_ids:
        assert await endpoint.result(task_id) is True
        fields = await endpoint.task(task_id)
        assert (fields["agent"], fields["attempts"]) == ("second", "1")
    assert sorted(await endpoint.notices()) == sorted((t, TaskState.SUCCESS) for t in task_ids)
    await endpoint.assert_settled()


async def test_a_stopping_agent_hands_back_what_waits_for_a_slot_before_its_grace(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """A stop gives running tasks the grace period, but tasks still waiting for a worker go
    back at once: another agent runs them while the first one's task is still running."""
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(3)])
    async with stack.ws(lease_ms=HOUR_MS) as server:
        url = ws_url(server)
        first = agent_settings(endpoint, url, engine="thread", workers=1, prefetch=2,
                               consumer="first", drain_grace_s=60)  # fmt: skip
        second = agent_settings(endpoint, url, engine="thread", workers=2, consumer="second")
        async with Agent(first) as agent:
            running = asyncio.create_task(agent.run())
            await gate.wait_started(1)
            assert agent.held == 3  # one running, two waiting for its only worker
            agent.stop()
            async with Agent(second) as other:
                serving = asyncio.create_task(other.run())
                await gate.wait_started(2)  # within the first agent's grace of 60 s
                await gate.release(3)
                await asyncio.wait_for(running, timeout=30)
                other.stop()
                await asyncio.wait_for(serving, timeout=30)

    agents = sorted([(await endpoint.task(task_id))["agent"] for task_id in task_ids])
    assert agents == ["first", "second", "second"]
    for task_id in task_ids:
        assert await endpoint.result(task_id) is True
    await endpoint.assert_settled()


async def hand_over(
    endpoint: GatewayEndpoint,
    gate: Gate,
    task_ids: list[str],
    first: AgentSettings,
    second: AgentSettings,
) -> None:
    """Run ``first`` until two tasks started and stop it: all three are back in the stream,
    no attempt counted; then ``second`` runs them."""
    async with Agent(first) as agent:
        running = asyncio.create_task(agent.run())
        await gate.wait_started(2)
        assert agent.held == 2
        agent.stop()
        await asyncio.wait_for(running, timeout=30)
        assert agent.held == 0

    for task_id in task_ids:
        fields = await endpoint.task(task_id)
        assert (fields["state"], fields.get("attempts", "0")) == (TaskState.WAITING, "0"), fields
    assert await endpoint.pending() == 0
    assert await endpoint.redis.xlen(endpoint.stream) == 3

    async with Agent(second) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started(3)
        await gate.release(3)
        await asyncio.wait_for(running, timeout=30)


AGENT = (
    "import asyncio\n"
    "from endpoint_agent import AgentSettings, run_agent\n"
    "asyncio.run(run_agent(AgentSettings.from_env()))\n"
)


async def spawn_agent(env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
    """An agent process, as ``fxbroker endpoint start`` runs it minus the registration."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, env=env, stdout=log, stderr=log
    )


async def read_notices(endpoint: GatewayEndpoint, cursor: str, until: int, seen: list[str]) -> str:
    """Block on the task group's stream until ``seen`` holds ``until`` task ids."""
    key = endpoint.keys.task_group_results(endpoint.task_group_id)
    deadline = time.monotonic() + 60
    while len(seen) < until:
        assert time.monotonic() < deadline, f"only {len(seen)} of {until} tasks finished"
        reply: Any = await endpoint.redis.xread({key: cursor}, count=1000, block=1000)
        for _, items in reply:
            for entry_id, fields in items:
                seen.append(fields["task_id"])
                cursor = entry_id
    return cursor


async def test_kill_9_in_the_middle_of_2000_tasks_loses_and_duplicates_nothing(
    stack: GatewayStack, endpoint: GatewayEndpoint, tmp_path: Path
) -> None:
    square = await endpoint.register(SQUARE)
    task_ids = await endpoint.submit_many(square, [((i,), {}) for i in range(2000)])
    async with stack.ws(lease_ms=500) as server:
        seen = await kill_one_agent_midway(endpoint, ws_url(server), tmp_path)

    assert len(seen) == 2000 and set(seen) == set(task_ids)  # each result exactly once
    pipe = endpoint.redis.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(endpoint.keys.task(task_id), stored("state", "result", "attempts"))
    rows = await pipe.execute()
    assert {state for state, _, _ in rows} == {TaskState.SUCCESS}
    assert {int(attempts) for _, _, attempts in rows} <= {1, 2}
    assert [await endpoint.result(t) for t in task_ids[:5]] == [0, 1, 4, 9, 16]
    await endpoint.assert_settled()


async def kill_one_agent_midway(endpoint: GatewayEndpoint, url: str, tmp_path: Path) -> list[str]:
    """An agent process (its settings from the environment, as ``fxbroker endpoint start``
    gives them: the gateway's URL and the credential, no Redis) is killed with SIGKILL after
    500 results; a second one finishes the rest. Returns the task ids of the results, in the
    order their notices came."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        {
            "FXBROKER_WS_URL": url,
            "FXBROKER_CREDENTIAL": endpoint.credential,
            "FXBROKER_ENDPOINT_ID": endpoint.endpoint_id,
            "FXBROKER_ENGINE": "process",
            "FXBROKER_WORKERS": "2",
            "FXBROKER_BLOCK_MS": "100",
        }
    )
    seen: list[str] = []
    with (tmp_path / "agent.log").open("wb") as log:
        first = await spawn_agent(env, log)
        try:
            cursor = await read_notices(endpoint, "0", 500, seen)
        finally:
            first.kill()
            await asyncio.wait_for(first.wait(), 30)
        assert first.returncode == -signal.SIGKILL
        second = await spawn_agent(env, log)
        try:
            await read_notices(endpoint, cursor, 2000, seen)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 60) == 0
    return seen
