"""Cancel one task or many: queued ones never run, running ones are interrupted by agents."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.messages import hash_field, hash_fields, stored_fields
from sdk.serialize import SOURCE_CODE, serialize

from .helpers import ApiUser, assert_error


def work(x: int) -> int:
    return x


async def queue(user: ApiUser, count: int) -> dict[str, Any]:
    code = serialize(work, SOURCE_CODE)
    function = await user.post("/v1/functions", {"function_name": "w", "function_code": code})
    endpoint = (await user.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    task = {"function_id": function.json()["function_id"], "payload": "p"}
    answer: dict[str, Any] = (
        await user.post(f"/v1/endpoints/{endpoint}/submit", {"tasks": [task] * count})
    ).json()
    answer["endpoint_id"] = endpoint
    return answer


async def test_a_queued_task_is_cancelled_and_its_group_told(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    submitted = await queue(alice, 1)
    (task_id,) = submitted["task_ids"]
    response = await alice.post(f"/v1/tasks/{task_id}/cancel")
    assert response.json() == {"task_id": task_id, "state": "cancelled", "outcome": "cancelled"}
    record = hash_fields(await aredis.hgetall(keys.task(task_id)))
    assert record["state"] == "cancelled" and float(record["completed_at"]) > 0
    assert await aredis.ttl(keys.task(task_id)) > 0
    notices = await aredis.xrange(keys.task_group_results(submitted["task_group_id"])) or []
    assert [fields for _, fields in notices] == [{"task_id": task_id, "state": "cancelled"}]
    # the stream entry stays; the agent's start script skips terminal tasks
    assert await aredis.xlen(keys.endpoint_tasks(submitted["endpoint_id"])) == 1
    assert (await alice.get(f"/v1/tasks/{task_id}")).json()["state"] == "cancelled"
    again = await alice.post(f"/v1/tasks/{task_id}/cancel")
    assert again.json() == {"task_id": task_id, "state": "cancelled", "outcome": "finished"}
    assert await aredis.xlen(keys.task_group_results(submitted["task_group_id"])) == 1


async def test_a_running_task_is_announced_on_the_cancel_channel(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    submitted = await queue(alice, 1)
    (task_id,) = submitted["task_ids"]
    await aredis.hset(keys.task(task_id), hash_field("state"), "running")
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.endpoint_cancel(submitted["endpoint_id"]))
    try:
        subscribed = await pubsub.get_message(timeout=5)
        assert subscribed is not None and subscribed["type"] == "subscribe"
        response = await alice.post(f"/v1/tasks/{task_id}/cancel")
        assert response.json() == {
            "task_id": task_id,
            "state": "running",
            "outcome": "interrupt_requested",
        }
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert json.loads(message["data"]) == {"task_id": task_id}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert (
        await aredis.hget(keys.task(task_id), hash_field("state")) == "running"
    )  # the agent writes it


async def test_a_finished_task_is_left_alone(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    (task_id,) = (await queue(alice, 1))["task_ids"]
    await aredis.hset(
        keys.task(task_id), mapping=stored_fields({"state": "success", "result": "00\nx"})
    )
    response = await alice.post(f"/v1/tasks/{task_id}/cancel")
    assert response.json() == {"task_id": task_id, "state": "success", "outcome": "finished"}
    assert await aredis.hget(keys.task(task_id), hash_field("state")) == "success"


async def test_cancel_many(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    mine = (await queue(alice, 3))["task_ids"]
    (bobs,) = (await queue(bob, 1))["task_ids"]
    await aredis.hset(keys.task(mine[2]), hash_field("state"), "failed")
    missing = str(uuid.uuid4())
    response = await alice.post("/v1/tasks/cancel", {"task_ids": [*mine, bobs, missing, "x"]})
    body = response.json()
    assert body["unknown"] == [bobs, missing, "x"]
    assert {task_id: result["outcome"] for task_id, result in body["tasks"].items()} == {
        mine[0]: "cancelled",
        mine[1]: "cancelled",
        mine[2]: "finished",
    }
    assert await aredis.hget(keys.task(bobs), hash_field("state")) == "waiting-for-ep"
    for bad in [{"task_ids": []}, {"task_ids": [missing] * 1001}, {"task_ids": "x"}]:
        assert_error(await alice.post("/v1/tasks/cancel", bad), 422, "VALIDATION_ERROR")


async def test_someone_elses_task_cannot_be_cancelled(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    (task_id,) = (await queue(alice, 1))["task_ids"]
    assert_error(await bob.post(f"/v1/tasks/{task_id}/cancel"), 404, "TASK_NOT_FOUND")
    assert_error(await bob.post(f"/v1/tasks/{uuid.uuid4()}/cancel"), 404, "TASK_NOT_FOUND")
    assert await aredis.hget(keys.task(task_id), hash_field("state")) == "waiting-for-ep"


async def test_a_task_group_lists_its_tasks_with_states(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    submitted = await queue(alice, 3)
    ids = submitted["task_ids"]
    await alice.post(f"/v1/tasks/{ids[1]}/cancel")
    path = f"/v1/task_groups/{submitted['task_group_id']}"
    body = (await alice.get(path)).json()
    assert body["total"] == 3
    assert body["task_ids"] == ids
    assert body["tasks"] == [
        {"task_id": ids[0], "state": "waiting-for-ep"},
        {"task_id": ids[1], "state": "cancelled"},
        {"task_id": ids[2], "state": "waiting-for-ep"},
    ]
    page = (await alice.get(f"{path}?offset=1&limit=1")).json()
    assert (page["total"], page["task_ids"]) == (3, [ids[1]])
    await aredis.delete(keys.task(ids[2]))  # expired
    assert (await alice.get(path)).json()["tasks"][2] == {"task_id": ids[2], "state": None}
    groups = (await alice.get("/v1/task_groups")).json()["task_groups"]
    assert [group["task_group_id"] for group in groups] == [submitted["task_group_id"]]
