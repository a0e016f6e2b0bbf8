"""Batch submit: the exact Redis records, ids in order, and every check before queueing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sdk.keys import Keys
from sdk.messages import hash_fields, stored, task_created_at
from sdk.serialize import SOURCE_CODE, pack_payload, serialize
from web_service.settings import WebSettings
from web_service.taskstore.tasks import new_task_ids

from .helpers import ApiUser, assert_error


def inc(x: int) -> int:
    return x + 1


CODE = serialize(inc, SOURCE_CODE)


async def setup(user: ApiUser, endpoint: str = "gpu") -> tuple[str, str]:
    """Register ``inc`` and an endpoint for ``user``; their ids."""
    function = await user.post("/v1/functions", {"function_name": "inc", "function_code": CODE})
    endpoint_body = await user.post("/v1/endpoints", {"name": endpoint})
    return function.json()["function_id"], endpoint_body.json()["endpoint_id"]


async def submit(user: ApiUser, endpoint_id: str, body: Any) -> dict[str, Any]:
    response = await user.post(f"/v1/endpoints/{endpoint_id}/submit", body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_submit_writes_the_contracted_records(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, web_settings: WebSettings
) -> None:
    function_id, endpoint_id = await setup(alice)
    payloads = [pack_payload((i,)) for i in range(5)]
    answer = await submit(
        alice,
        endpoint_id,
        {"tasks": [{"function_id": function_id, "payload": p} for p in payloads]},
    )
    task_ids: list[str] = answer["task_ids"]
    group_id: str = answer["task_group_id"]
    assert len(set(task_ids)) == 5
    assert all(uuid.UUID(i) for i in [*task_ids, group_id])

    entries = await aredis.xrange(keys.endpoint_tasks(endpoint_id))
    assert entries is not None
    assert [fields for _, fields in entries] == [  # function and group: in the hash only
        {"task_id": t, "payload": p} for t, p in zip(task_ids, payloads, strict=True)
    ]
    for task_id in task_ids:
        assert uuid.UUID(task_id).version == 7  # it carries the creation time
        created_at = task_created_at(task_id)
        assert created_at is not None and abs(created_at - time.time()) < 600
        raw = await aredis.hgetall(keys.task(task_id))
        assert set(raw) == set(stored("user_id", "endpoint_id", "function_id", "task_group_id",
                                      "state"))  # one-character names  # fmt: skip
        assert hash_fields(raw) == {  # the id is the key's: a field would repeat it in every task
            "user_id": alice.user_id,
            "endpoint_id": endpoint_id,
            "function_id": function_id,
            "task_group_id": group_id,
            "state": "waiting-for-ep",
        }  # and no attempts: the first start counts one
    group_key = keys.task_group_tasks(group_id)
    assert await aredis.lrange(group_key, 0, -1) == task_ids
    assert 0 < await aredis.ttl(group_key) <= web_settings.result_ttl_s


async def test_a_given_task_group_collects_several_batches(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    group_id = str(uuid.uuid4())
    task = {"function_id": function_id, "payload": pack_payload((1,))}
    first = await submit(alice, endpoint_id, {"tasks": [task, task], "task_group_id": group_id})
    second = await submit(alice, endpoint_id, {"tasks": [task], "task_group_id": group_id})
    assert first["task_group_id"] == second["task_group_id"] == group_id
    assert await aredis.lrange(keys.task_group_tasks(group_id), 0, -1) == [
        *first["task_ids"],
        *second["task_ids"],
    ]
    fresh = await submit(alice, endpoint_id, {"tasks": [task], "task_group_id": None})
    assert fresh["task_group_id"] != group_id


async def test_submit_heals_an_evicted_function_code(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    await aredis.delete(keys.function_code(function_id))
    await submit(alice, endpoint_id, {"tasks": [{"function_id": function_id, "payload": "x"}]})
    assert await aredis.get(keys.function_code(function_id)) == CODE


async def test_what_is_not_the_callers_is_404(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    bobs_function, bobs_endpoint = await setup(bob)
    mine = {"function_id": function_id, "payload": "p"}

    assert_error(
        await alice.post(f"/v1/endpoints/{bobs_endpoint}/submit", {"tasks": [mine]}),
        404,
        "ENDPOINT_NOT_FOUND",
    )
    unknown = str(uuid.uuid4())
    body = assert_error(
        await alice.post(
            f"/v1/endpoints/{endpoint_id}/submit",
            {"tasks": [mine, {"function_id": bobs_function, "payload": "p"}]},
        ),
        404,
        "FUNCTION_NOT_FOUND",
    )
    assert bobs_function in body["message"]
    body = assert_error(
        await alice.post(
            f"/v1/endpoints/{endpoint_id}/submit",
            {"tasks": [{"function_id": unknown, "payload": "p"}]},
        ),
        404,
        "FUNCTION_NOT_FOUND",
    )
    assert unknown in body["message"]

    bobs_group = (
        await submit(
            bob, bobs_endpoint, {"tasks": [{"function_id": bobs_function, "payload": "p"}]}
        )
    )["task_group_id"]
    assert_error(
        await alice.post(
            f"/v1/endpoints/{endpoint_id}/submit",
            {"tasks": [mine], "task_group_id": bobs_group},
        ),
        404,
        "TASK_GROUP_NOT_FOUND",
    )
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0
    assert await aredis.llen(keys.task_group_tasks(bobs_group)) == 1


async def test_submit_bodies_are_validated(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    path = f"/v1/endpoints/{endpoint_id}/submit"
    good = {"function_id": function_id, "payload": "p"}
    for body in [
        {},
        {"tasks": []},
        {"tasks": "nope"},
        {"tasks": [good] * 51},
        {"tasks": [{"function_id": function_id, "payload": 7}]},
        {"tasks": [{"function_id": function_id}]},
        {"tasks": [{"payload": "p"}]},
        {"tasks": ["not an object"]},
        {"tasks": [good], "task_group_id": "not-a-uuid"},
        {"tasks": [good], "task_group_id": 5},
    ]:
        assert_error(await alice.post(path, body), 422, "VALIDATION_ERROR")
    assert_error(await alice.post(path, content=b"[1, 2"), 400, "BAD_REQUEST")
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0


async def test_a_tasks_own_walltime_reaches_its_stream_entry(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    tasks = [
        {"function_id": function_id, "payload": "a", "walltime_s": 0.5},
        {"function_id": function_id, "payload": "b"},
        {"function_id": function_id, "payload": "c", "walltime_s": 30},
        {"function_id": function_id, "payload": "d", "walltime_s": None},
    ]
    await submit(alice, endpoint_id, {"tasks": tasks})
    entries = await aredis.xrange(keys.endpoint_tasks(endpoint_id))
    assert [fields.get("walltime_s") for _, fields in entries] == ["0.5", None, "30.0", None]


async def test_a_bad_walltime_is_422_and_queues_nothing(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    path = f"/v1/endpoints/{endpoint_id}/submit"
    good = {"function_id": function_id, "payload": "p"}
    for walltime in [0, -1, "5", True, [1], 7 * 24 * 3600 + 1, 1e308]:
        body = {"tasks": [good, {**good, "walltime_s": walltime}]}
        response = await alice.post(path, body)
        assert_error(response, 422, "VALIDATION_ERROR")
        assert "tasks[1].walltime_s" in response.json()["message"]
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        content = b'{"tasks": [{"function_id": "%s", "payload": "p", "walltime_s": %s}]}' % (
            function_id.encode(),
            literal,
        )
        assert_error(await alice.post(path, content=content), 422, "VALIDATION_ERROR")
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0


async def test_a_body_over_the_limit_is_413(
    alice: ApiUser, web_settings: WebSettings, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id, endpoint_id = await setup(alice)
    big = "x" * web_settings.max_body_bytes
    response = await alice.post(
        f"/v1/endpoints/{endpoint_id}/submit",
        {"tasks": [{"function_id": function_id, "payload": big}]},
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0


async def test_a_streamed_body_over_the_limit_is_413(
    alice: ApiUser, web_settings: WebSettings
) -> None:
    """A body without Content-Length is counted as it arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(web_settings.max_body_bytes // 1024 + 1):
            yield b"x" * 1024

    response = await alice.client.post("/v1/functions", content=chunks(), headers=alice.headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_a_warm_submit_costs_one_sql_statement_at_most(alice: ApiUser) -> None:
    """Once the caches know the endpoint and function: a new group's row, nothing per task."""
    function_id, endpoint_id = await setup(alice)
    tasks = [{"function_id": function_id, "payload": "p"}] * 20
    first = await submit(alice, endpoint_id, {"tasks": tasks})
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        await submit(alice, endpoint_id, {"tasks": tasks})
        assert len(statements) == 1 and statements[0].startswith("INSERT INTO task_groups")
        statements.clear()
        await submit(alice, endpoint_id, {"tasks": tasks, "task_group_id": first["task_group_id"]})
        assert statements == []
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_new_task_ids_are_uuid7_stamped_with_the_time_now() -> None:
    before = time.time()
    ids = new_task_ids(3)
    after = time.time()
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 7 for i in ids)
    created = [task_created_at(i) for i in ids]
    assert all(c is not None and before - 0.001 <= c <= after + 0.001 for c in created)
