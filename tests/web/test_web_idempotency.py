"""Idempotency-Key on batch submit: a retry returns the same ids and queues nothing."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.serialize import SOURCE_CODE, serialize
from web_service.settings import WebSettings
from web_service.taskstore import idempotency
from web_service.taskstore.idempotency import fingerprint

from .helpers import ApiUser, assert_error


def echo(x: int) -> int:
    return x


async def setup(user: ApiUser) -> tuple[str, bytes]:
    code = serialize(echo, SOURCE_CODE)
    function = await user.post("/v1/functions", {"function_name": "e", "function_code": code})
    endpoint = (await user.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    task = {"function_id": function.json()["function_id"], "payload": "p"}
    return endpoint, json.dumps({"tasks": [task, task]}).encode()


async def submit(user: ApiUser, endpoint_id: str, body: bytes, key: str) -> Any:
    return await user.client.post(
        f"/v1/endpoints/{endpoint_id}/submit",
        content=body,
        headers={**user.headers, "Idempotency-Key": key},
    )


async def test_a_retry_answers_the_same_ids_and_queues_nothing(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys, web_settings: WebSettings
) -> None:
    endpoint_id, body = await setup(alice)
    first = await submit(alice, endpoint_id, body, "batch-1")
    assert first.status_code == 200, first.text
    retry = await submit(alice, endpoint_id, body, "batch-1")
    assert retry.json() == first.json()
    stream = keys.endpoint_tasks(endpoint_id)
    assert await aredis.xlen(stream) == 2
    group = first.json()["task_group_id"]
    assert await aredis.lrange(keys.task_group_tasks(group), 0, -1) == first.json()["task_ids"]
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
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    """A concurrent duplicate finds the claim written before queueing."""
    endpoint_id, body = await setup(alice)
    pending = {"fingerprint": fingerprint(endpoint_id, body), "response": None}
    await aredis.set(keys.idempotency(alice.user_id, "k"), json.dumps(pending), ex=60)
    response = await submit(alice, endpoint_id, body, "k")
    assert_error(response, 409, "CONFLICT")
    assert response.headers["retry-after"] == "1"
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 0


async def test_the_same_key_for_another_request_is_refused(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    endpoint_id, body = await setup(alice)
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
