"""Idempotency-Key on batch submit: a retry returns the same ids and queues nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.messages import SubmitResponse, hash_fields, stored, stored_fields
from sdk.serialize import SOURCE_CODE, serialize
from web_service.settings import WebSettings
from web_service.store.models import new_id
from web_service.taskstore import idempotency
from web_service.taskstore.idempotency import fingerprint
from web_service.taskstore.tasks import new_task_ids

from .helpers import ApiUser, assert_error


def echo(x: int) -> int:
    return x


@pytest.fixture(params=[False, True], ids=["new group", "existing group"])
def grouped(request: pytest.FixtureRequest) -> bool:
    """Whether the batch names an existing task group: then, on one Redis, the key is claimed
    in the same script call as the writes; a new group's batch claims it first."""
    return bool(request.param)


async def setup(user: ApiUser, grouped: bool = False) -> tuple[str, bytes]:
    code = serialize(echo, SOURCE_CODE)
    function = await user.post("/v1/functions", {"function_name": "e", "function_code": code})
    endpoint = (await user.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    task = {"function_id": function.json()["function_id"], "payload": "p"}
    body: dict[str, Any] = {"tasks": [task, task]}
    if grouped:  # a group made by a batch to another endpoint, so this one's stream is empty
        other = (await user.post("/v1/endpoints", {"name": "cpu"})).json()["endpoint_id"]
        made = await user.post(f"/v1/endpoints/{other}/submit", {"tasks": [task]})
        body["task_group_id"] = made.json()["task_group_id"]
    return endpoint, json.dumps(body).encode()


async def submit(user: ApiUser, endpoint_id: str, body: bytes, key: str) -> Any:
    return await user.client.post(
        f"/v1/endpoints/{endpoint_id}/submit",
        content=body,
        headers={**user.headers, "Idempotency-Key": key},
    )


async def test_a_retry_answers_the_same_ids_and_queues_nothing(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, web_settings: WebSettings, grouped: bool
) -> None:
    endpoint_id, body = await setup(alice, grouped)
    first = await submit(alice, endpoint_id, body, "batch-1")
    assert first.status_code == 200, first.text
    retry = await submit(alice, endpoint_id, body, "batch-1")
    assert retry.json() == first.json()
    stream = keys.endpoint_tasks(endpoint_id)
    assert await aredis.xlen(stream) == 2
    group = first.json()["task_group_id"]
    listed = await aredis.lrange(keys.task_group_tasks(group), 0, -1)
    assert listed[int(grouped) :] == first.json()["task_ids"]  # after the group's first task
    ttl = await aredis.ttl(keys.idempotency(alice.user_id, "batch-1"))
    assert idempotency.CLAIM_TTL_S < ttl <= web_settings.idempotency_ttl_s  # the answer's TTL
    other = await submit(alice, endpoint_id, body, "batch-2")
    assert set(other.json()["task_ids"]).isdisjoint(first.json()["task_ids"])
    assert await aredis.xlen(stream) == 4


async def test_keys_are_per_user(alice: ApiUser, bob: ApiUser) -> None:
    alices_endpoint, alices_body = await setup(alice)
    bobs_endpoint, bobs_body = await setup(bob)
    first = await submit(alice, alices_endpoint, alices_body, "k")
    second = await submit(bob, bobs_endpoint, bobs_body, "k")
    assert second.status_code == 200
    assert set(first.json()["task_ids"]).isdisjoint(second.json()["task_ids"])


async def test_a_request_still_underway_answers_409(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, grouped: bool
) -> None:
    """A concurrent duplicate finds the claim written before queueing."""
    endpoint_id, body = await setup(alice, grouped)
    pending = {"fingerprint": fingerprint(endpoint_id, body), "response": None}
    await aredis.set(keys.idempotency(alice.user_id, "k"), json.dumps(pending), ex=60)
    response = await submit(alice, endpoint_id, body, "k")
    assert_error(response, 409, "CONFLICT")
    assert response.headers["retry-after"] == "1"
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0


async def test_the_same_key_for_another_request_is_refused(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, grouped: bool
) -> None:
    endpoint_id, body = await setup(alice, grouped)
    await submit(alice, endpoint_id, body, "k")
    changed = body.replace(b'"p"', b'"q"')
    assert_error(await submit(alice, endpoint_id, changed, "k"), 422, "IDEMPOTENCY_KEY_REUSED")
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 2


async def test_a_refused_batch_does_not_claim_its_key(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    endpoint_id, body = await setup(alice)
    bad = json.dumps({"tasks": [{"function_id": "nope", "payload": "p"}]}).encode()
    assert_error(await submit(alice, endpoint_id, bad, "k"), 404, "FUNCTION_NOT_FOUND")
    assert await aredis.exists(keys.idempotency(alice.user_id, "k")) == 0
    assert (await submit(alice, endpoint_id, body, "k")).status_code == 200


async def test_bad_keys_are_422(alice: ApiUser) -> None:
    endpoint_id, body = await setup(alice)
    for key in ["has space", "x" * 256, ""]:
        assert_error(await submit(alice, endpoint_id, body, key), 422, "VALIDATION_ERROR")


async def test_the_claim_of_a_request_that_died_lapses_soon(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, web_settings: WebSettings, grouped: bool
) -> None:
    """A web process killed between the claim and the answer leaves a claim whose deadline
    passes in seconds, not a day: the client's retry then queues the batch, with the ids the
    dead request had chosen."""
    endpoint_id, body = await setup(alice, grouped)
    key = keys.idempotency(alice.user_id, "crashed")
    plan: SubmitResponse = {"task_group_id": new_id(), "task_ids": new_task_ids(2)}
    claimed = await idempotency.claim(
        aredis, key, fingerprint(endpoint_id, body), plan, ttl_s=web_settings.idempotency_ttl_s
    )
    assert (claimed.answer, claimed.retry, claimed.plan) == (None, False, plan)
    record = json.loads(str(await aredis.get(key)))
    assert 0 < record["until"] - time.time() <= idempotency.CLAIM_TTL_S
    assert_error(await submit(alice, endpoint_id, body, "crashed"), 409, "CONFLICT")
    await aredis.set(key, json.dumps({**record, "until": time.time() - 1}))  # what time does
    retry = await submit(alice, endpoint_id, body, "crashed")
    assert retry.status_code == 200, retry.text
    assert retry.json() == plan
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 2


async def test_a_retry_after_a_batch_cut_in_the_middle_queues_each_task_once(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, web_settings: WebSettings, grouped: bool
) -> None:
    """Redis went away after the first task of the batch was queued: the retry queues the
    same ids, leaves the task already queued (and maybe running) as it is, and lists each id
    once in the group; the first task's second entry is for the start script to drop."""
    endpoint_id, body = await setup(alice, grouped)
    key = keys.idempotency(alice.user_id, "cut")
    request = fingerprint(endpoint_id, body)
    ttl_s = web_settings.idempotency_ttl_s
    group_id = json.loads(body).get("task_group_id") or new_id()
    plan: SubmitResponse = {"task_group_id": group_id, "task_ids": new_task_ids(2)}
    await idempotency.claim(aredis, key, request, plan, ttl_s=ttl_s)
    first_id = plan["task_ids"][0]
    await aredis.hset(
        keys.task(first_id), mapping=stored_fields({"state": "running", "attempts": "1"})
    )
    await aredis.xadd(keys.endpoint_tasks(endpoint_id), {"task_id": first_id})
    await idempotency.abandon(aredis, key, request, plan, ttl_s=ttl_s)  # the cut try gives up

    retry = await submit(alice, endpoint_id, body, "cut")
    assert retry.status_code == 200, retry.text
    assert retry.json() == plan
    assert await aredis.hmget(keys.task(first_id), stored("state", "attempts")) == ["running", "1"]
    second = hash_fields(await aredis.hgetall(keys.task(plan["task_ids"][1])))
    assert (second["state"], second.get("attempts", "0")) == ("waiting-for-ep", "0")
    stream: Any = await aredis.xrange(keys.endpoint_tasks(endpoint_id))
    assert [f["task_id"] for _, f in stream] == [first_id, *plan["task_ids"]]
    group = keys.task_group_tasks(plan["task_group_id"])
    assert (await aredis.lrange(group, 0, -1))[int(grouped) :] == plan["task_ids"]
    again = await submit(alice, endpoint_id, body, "cut")  # answered now: nothing queued
    assert again.json() == plan
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 3
    assert (await aredis.lrange(group, 0, -1))[int(grouped) :] == plan["task_ids"]
