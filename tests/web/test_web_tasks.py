"""Reading tasks back: pending, completed the way an agent completes them, in batches, groups."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from sdk.keys import Keys
from sdk.messages import exception_record, stored_fields
from sdk.serialize import SOURCE_CODE, deserialize, pack_payload, serialize
from service_common.lua import execute_pipeline
from web_service.taskstore.tasks import new_task_ids, parse_task_reads, queue_task_reads, read_task

from .helpers import ApiUser, assert_error


def square(x: int) -> int:
    return x * x


async def queue(user: ApiUser, count: int) -> dict[str, Any]:
    """Register ``square`` and an endpoint, submit ``count`` tasks; the submit answer."""
    function = await user.post(
        "/v1/functions",
        {"function_name": "square", "function_code": serialize(square, SOURCE_CODE)},
    )
    endpoint = await user.post("/v1/endpoints", {"name": "gpu"})
    response = await user.post(
        f"/v1/endpoints/{endpoint.json()['endpoint_id']}/submit",
        {
            "tasks": [
                {"function_id": function.json()["function_id"], "payload": pack_payload((i,))}
                for i in range(count)
            ]
        },
    )
    answer: dict[str, Any] = response.json()
    answer["function_id"] = function.json()["function_id"]
    answer["endpoint_id"] = endpoint.json()["endpoint_id"]
    return answer


async def complete(
    aredis: aioredis.Redis, keys: Keys, task_id: str, fields: dict[str, str]
) -> None:
    """Write a terminal state into the task hash, as the endpoint agent does."""
    now = f"{time.time():.6f}"
    mapping: dict[FieldT, EncodableT] = {"started_at": now, "completed_at": now, "attempts": "1"}
    mapping.update(fields)
    await aredis.hset(keys.task(task_id), mapping=stored_fields(mapping))


async def test_a_pending_then_completed_task(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    submitted = await queue(alice, 1)
    (task_id,) = submitted["task_ids"]
    pending = (await alice.get(f"/v1/tasks/{task_id}")).json()
    assert pending["state"] == "waiting-for-ep"
    assert pending["task_id"] == task_id
    assert pending["function_id"] == submitted["function_id"]
    assert pending["endpoint_id"] == submitted["endpoint_id"]
    assert pending["task_group_id"] == submitted["task_group_id"]
    assert isinstance(pending["created_at"], float)
    assert pending["started_at"] is None and pending["completed_at"] is None
    assert "result" not in pending and "exception" not in pending

    await complete(aredis, keys, task_id, {"state": "success", "result": serialize(49)})
    done = (await alice.get(f"/v1/tasks/{task_id}")).json()
    assert done["state"] == "success"
    assert deserialize(done["result"]) == 49
    assert isinstance(done["completed_at"], float)


async def test_a_failed_task_carries_its_exception(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    (task_id,) = (await queue(alice, 1))["task_ids"]
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        record = exception_record(exc)
    await complete(aredis, keys, task_id, {"state": "failed", "exception": json.dumps(record)})
    body = (await alice.get(f"/v1/tasks/{task_id}")).json()
    assert body["state"] == "failed"
    assert body["exception"] == record


async def test_another_users_task_is_404(alice: ApiUser, bob: ApiUser) -> None:
    (task_id,) = (await queue(alice, 1))["task_ids"]
    assert_error(await bob.get(f"/v1/tasks/{task_id}"), 404, "TASK_NOT_FOUND")
    assert_error(await alice.get(f"/v1/tasks/{uuid.uuid4()}"), 404, "TASK_NOT_FOUND")
    assert_error(await alice.get("/v1/tasks/{weird}"), 404, "TASK_NOT_FOUND")


async def test_batch_status(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    mine = (await queue(alice, 3))["task_ids"]
    (bobs,) = (await queue(bob, 1))["task_ids"]
    await complete(aredis, keys, mine[1], {"state": "success", "result": serialize(1)})
    missing = str(uuid.uuid4())
    response = await alice.post(
        "/v1/tasks/batch_status", {"task_ids": [*mine, bobs, missing, mine[0]]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(body["tasks"]) == sorted(mine)
    assert body["tasks"][mine[0]]["state"] == "waiting-for-ep"
    assert body["tasks"][mine[1]]["state"] == "success"
    assert body["unknown"] == [bobs, missing]


async def test_batch_status_is_validated(alice: ApiUser) -> None:
    for body in [
        {"task_ids": []},
        {"task_ids": "abc"},
        {"task_ids": [1, 2]},
        {"task_ids": [str(uuid.uuid4()) for _ in range(1001)]},
        {},
    ]:
        assert_error(await alice.post("/v1/tasks/batch_status", body), 422, "VALIDATION_ERROR")


async def test_task_group(alice: ApiUser, bob: ApiUser) -> None:
    submitted = await queue(alice, 4)
    group_id = submitted["task_group_id"]
    body = (await alice.get(f"/v1/task_groups/{group_id}")).json()
    assert body["task_group_id"] == group_id
    assert body["task_ids"] == submitted["task_ids"]
    assert isinstance(body["created_at"], float)
    assert_error(await bob.get(f"/v1/task_groups/{group_id}"), 404, "TASK_GROUP_NOT_FOUND")
    assert_error(await alice.get(f"/v1/task_groups/{uuid.uuid4()}"), 404, "TASK_GROUP_NOT_FOUND")


async def test_a_task_group_page_of_no_tasks_answers_the_group_and_its_total(
    alice: ApiUser, bob: ApiUser
) -> None:
    """``limit=0`` (ws_service's ownership check) reads no task, and is still the owner's."""
    group_id = (await queue(alice, 3))["task_group_id"]
    body = (await alice.get(f"/v1/task_groups/{group_id}?limit=0")).json()
    assert (body["task_group_id"], body["total"], body["task_ids"], body["tasks"]) == (
        group_id, 3, [], []
    )  # fmt: skip
    one = (await alice.get(f"/v1/task_groups/{group_id}?limit=1&offset=2")).json()
    assert (one["total"], len(one["tasks"])) == (3, 1)
    assert_error(await bob.get(f"/v1/task_groups/{group_id}?limit=0"), 404, "TASK_GROUP_NOT_FOUND")
    assert_error(await alice.get(f"/v1/task_groups/{group_id}?limit=-1"), 422, "VALIDATION_ERROR")


async def test_many_tasks_are_read_by_a_few_script_calls_each_as_its_own(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    """On one Redis, 600 tasks read at once go as three calls of the read script (256 tasks
    each at most), and each task comes back as a read of it alone would find it: another
    user's and an unknown id are left out, a completed one has its result."""
    mine = [t for _ in range(12) for t in (await queue(alice, 50))["task_ids"]]  # 50 a batch
    await complete(aredis, keys, mine[299], {"state": "success", "result": serialize(4)})
    theirs = new_task_ids(1)[0]
    await aredis.hset(keys.task(theirs), mapping=stored_fields({"user_id": "bob", "state": "x"}))
    asked = [*mine[:300], theirs, str(uuid.uuid4()), *mine[300:]]

    pipe = aredis.pipeline(transaction=False)
    reads = await queue_task_reads(pipe, keys, asked)
    assert (reads.batched, reads.replies, len(pipe)) == (True, 3, 3)
    found = parse_task_reads(reads, await execute_pipeline(pipe), alice.user_id)

    assert list(found) == mine
    one_by_one = [await read_task(aredis, keys, alice.user_id, t) for t in mine]
    assert list(found.values()) == one_by_one
    assert found[mine[299]]["state"] == "success" and found[mine[0]]["state"] == "waiting-for-ep"
