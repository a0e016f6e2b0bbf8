"""Sharing functions (public, named users) and endpoints, allow-lists, and deletion."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.serialize import SOURCE_CODE, serialize
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error, in_process_client


def halve(x: float) -> float:
    return x / 2


def negate(x: float) -> float:
    return -x


async def function(user: ApiUser, fn: Any = halve) -> str:
    body = {"function_name": fn.__name__, "function_code": serialize(fn, SOURCE_CODE)}
    response = await user.post("/v1/functions", body)
    assert response.status_code == 200, response.text
    function_id: str = response.json()["function_id"]
    return function_id


async def endpoint(user: ApiUser, name: str = "gpu") -> str:
    endpoint_id: str = (await user.post("/v1/endpoints", {"name": name})).json()["endpoint_id"]
    return endpoint_id


async def submit(user: ApiUser, endpoint_id: str, function_id: str) -> Any:
    return await user.post(
        f"/v1/endpoints/{endpoint_id}/submit",
        {"tasks": [{"function_id": function_id, "payload": "p"}]},
    )


async def put(user: ApiUser, path: str, body: Any) -> Any:
    return await user.client.put(path, json=body, headers=user.headers)


async def test_a_function_shared_by_name(alice: ApiUser, bob: ApiUser) -> None:
    function_id = await function(alice)
    bobs_endpoint = await endpoint(bob)
    assert_error(await submit(bob, bobs_endpoint, function_id), 404, "FUNCTION_NOT_FOUND")

    path = f"/v1/functions/{function_id}/sharing"
    answer = await put(alice, path, {"public": False, "users": ["bob", "alice"]})
    assert answer.json() == {"function_id": function_id, "public": False, "users": ["bob"]}
    assert (await alice.get(path)).json()["users"] == ["bob"]

    seen = (await bob.get(f"/v1/functions/{function_id}")).json()
    assert (seen["owned"], seen["owner_id"]) == (False, alice.user_id)
    assert "function_code" not in seen
    assert [f["function_id"] for f in (await bob.get("/v1/functions")).json()["functions"]] == [
        function_id
    ]
    assert (await submit(bob, bobs_endpoint, function_id)).status_code == 200
    # a user it is shared with may use it, not change it
    assert_error(await bob.get(path), 403, "FORBIDDEN")
    assert_error(await put(bob, path, {"public": True, "users": []}), 403, "FORBIDDEN")
    assert_error(
        await bob.client.delete(f"/v1/functions/{function_id}", headers=bob.headers),
        403,
        "FORBIDDEN",
    )

    await put(alice, path, {"public": False, "users": []})
    assert_error(await bob.get(f"/v1/functions/{function_id}"), 404, "FUNCTION_NOT_FOUND")
    assert_error(await submit(bob, bobs_endpoint, function_id), 404, "FUNCTION_NOT_FOUND")


async def test_a_public_function_is_usable_by_anyone(alice: ApiUser, bob: ApiUser) -> None:
    function_id = await function(alice)
    path = f"/v1/functions/{function_id}/sharing"
    assert (await put(alice, path, {"public": True, "users": []})).json()["public"] is True
    assert (await bob.get(f"/v1/functions/{function_id}")).json()["public"] is True
    assert (await submit(bob, await endpoint(bob), function_id)).status_code == 200
    assert (await alice.get(path)).json() == {
        "function_id": function_id,
        "public": True,
        "users": [],
    }


async def test_sharing_bodies_are_checked(alice: ApiUser) -> None:
    function_id = await function(alice)
    path = f"/v1/functions/{function_id}/sharing"
    body = assert_error(
        await put(alice, path, {"public": True, "users": ["bob", "nobody"]}), 404, "USER_NOT_FOUND"
    )
    assert "nobody" in body["message"]
    assert (await alice.get(path)).json()["public"] is False  # nothing changed
    for bad in [
        {"users": []},
        {"public": "yes", "users": []},
        {"public": True, "users": "bob"},
        {"public": True, "users": [" "]},
        {"public": True, "users": ["bo\x00b"]},
    ]:
        assert_error(await put(alice, path, bad), 422, "VALIDATION_ERROR")
    endpoint_id = await endpoint(alice)
    assert_error(
        await put(alice, f"/v1/endpoints/{endpoint_id}/sharing", {"users": ["nobody"]}),
        404,
        "USER_NOT_FOUND",
    )


async def test_an_endpoint_shared_by_name(alice: ApiUser, bob: ApiUser) -> None:
    endpoint_id = await endpoint(alice)
    bobs_function = await function(bob)
    assert_error(await submit(bob, endpoint_id, bobs_function), 404, "ENDPOINT_NOT_FOUND")
    path = f"/v1/endpoints/{endpoint_id}/sharing"
    answer = (await put(alice, path, {"users": ["bob"]})).json()
    assert answer == {"endpoint_id": endpoint_id, "users": ["bob"]}

    seen = (await bob.get(f"/v1/endpoints/{endpoint_id}")).json()
    assert (seen["owned"], seen["name"]) == (False, "gpu")
    assert (await bob.get(f"/v1/endpoints/{endpoint_id}/status")).status_code == 200
    assert [e["endpoint_id"] for e in (await bob.get("/v1/endpoints")).json()["endpoints"]] == [
        endpoint_id
    ]
    assert (await submit(bob, endpoint_id, bobs_function)).status_code == 200
    assert_error(await bob.get(path), 403, "FORBIDDEN")
    assert_error(await put(bob, path, {"users": []}), 403, "FORBIDDEN")
    allowed = f"/v1/endpoints/{endpoint_id}/allowed_functions"
    assert_error(await put(bob, allowed, {"function_ids": []}), 403, "FORBIDDEN")
    assert_error(
        await bob.client.delete(f"/v1/endpoints/{endpoint_id}", headers=bob.headers),
        403,
        "FORBIDDEN",
    )

    await put(alice, path, {"users": []})
    assert_error(await bob.get(f"/v1/endpoints/{endpoint_id}"), 404, "ENDPOINT_NOT_FOUND")
    assert_error(await submit(bob, endpoint_id, bobs_function), 404, "ENDPOINT_NOT_FOUND")


async def test_the_allow_list_is_enforced_at_submit_and_mirrored_for_agents(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    endpoint_id = await endpoint(alice)
    allowed_function, other_function = await function(alice, halve), await function(alice, negate)
    path = f"/v1/endpoints/{endpoint_id}/allowed_functions"
    assert (await alice.get(path)).json() == {"endpoint_id": endpoint_id, "function_ids": []}
    assert await aredis.exists(keys.endpoint_allowed_functions(endpoint_id)) == 0

    answer = await put(alice, path, {"function_ids": [allowed_function]})
    assert answer.json() == {"endpoint_id": endpoint_id, "function_ids": [allowed_function]}
    assert await aredis.smembers(keys.endpoint_allowed_functions(endpoint_id)) == {allowed_function}
    assert (await alice.get(path)).json()["function_ids"] == [allowed_function]
    assert (await submit(alice, endpoint_id, allowed_function)).status_code == 200
    body = assert_error(
        await submit(alice, endpoint_id, other_function), 403, "FUNCTION_NOT_ALLOWED"
    )
    assert other_function in body["message"]
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 1

    await put(alice, path, {"function_ids": []})  # an empty list lifts the restriction
    assert await aredis.exists(keys.endpoint_allowed_functions(endpoint_id)) == 0
    assert (await submit(alice, endpoint_id, other_function)).status_code == 200
    for bad in [{"function_ids": ["not-a-uuid"]}, {"function_ids": "x"}, {}]:
        assert_error(await put(alice, path, bad), 422, "VALIDATION_ERROR")


async def test_a_deleted_function_refuses_new_tasks_and_keeps_queued_ones(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id = await function(alice)
    endpoint_id = await endpoint(alice)
    queued = (await submit(alice, endpoint_id, function_id)).json()["task_ids"][0]
    await put(alice, f"/v1/functions/{function_id}/sharing", {"public": True, "users": []})

    path = f"/v1/functions/{function_id}"
    assert_error(await bob.client.delete(path, headers=bob.headers), 403, "FORBIDDEN")
    deleted = await alice.client.delete(path, headers=alice.headers)
    assert deleted.json() == {"function_id": function_id, "deleted": True}
    body = assert_error(await submit(alice, endpoint_id, function_id), 410, "FUNCTION_DELETED")
    assert function_id in body["message"]
    assert_error(await submit(bob, await endpoint(bob), function_id), 410, "FUNCTION_DELETED")
    assert_error(await alice.get(path), 404, "FUNCTION_NOT_FOUND")
    assert (await alice.get("/v1/functions")).json()["functions"] == []
    # the queued task is still queued and its code still where agents read it
    assert (await alice.get(f"/v1/tasks/{queued}")).json()["state"] == "waiting-for-ep"
    assert await aredis.xlen(keys.endpoint_tasks(endpoint_id)) == 1
    assert await aredis.get(keys.function_code(function_id)) == serialize(halve, SOURCE_CODE)
    # registering the same code again revives it under the same id
    assert await function(alice) == function_id
    assert (await submit(alice, endpoint_id, function_id)).status_code == 200


async def test_a_deleted_endpoint_disappears_and_comes_back_by_name(
    alice: ApiUser, bob: ApiUser
) -> None:
    endpoint_id = await endpoint(alice)
    function_id = await function(alice)
    path = f"/v1/endpoints/{endpoint_id}"
    assert_error(await bob.client.delete(path, headers=bob.headers), 404, "ENDPOINT_NOT_FOUND")
    deleted = await alice.client.delete(path, headers=alice.headers)
    assert deleted.json() == {"endpoint_id": endpoint_id, "deleted": True}
    assert_error(await alice.get(path), 404, "ENDPOINT_NOT_FOUND")
    assert_error(await submit(alice, endpoint_id, function_id), 404, "ENDPOINT_NOT_FOUND")
    assert (await alice.get("/v1/endpoints")).json()["endpoints"] == []
    assert_error(await alice.client.delete(path, headers=alice.headers), 404, "ENDPOINT_NOT_FOUND")
    assert await endpoint(alice) == endpoint_id
    assert (await submit(alice, endpoint_id, function_id)).status_code == 200
    assert_error(
        await alice.client.delete(f"/v1/functions/{uuid.uuid4()}", headers=alice.headers),
        404,
        "FUNCTION_NOT_FOUND",
    )


def test_the_allow_list_key_shares_the_endpoints_hash_tag() -> None:
    assert Keys("fx").endpoint_allowed_functions("e1") == "fx:{ep:e1}:allowed_functions"


async def test_another_process_sees_a_share_once_its_cache_lapses(
    web_settings: WebSettings, alice: ApiUser, bob: ApiUser
) -> None:
    """Process B cached that bob may not use alice's function; with catalog_cache_s=0 it
    re-reads, so the share alice made through process A counts at once."""
    function_id = await function(alice)
    settings = replace(web_settings, catalog_cache_s=0)
    async with in_process_client(create_app(settings)) as other:
        bob_on_b = ApiUser(bob.user_id, "bob", bob.token, other)
        bobs_endpoint = await endpoint(bob_on_b)
        assert_error(await submit(bob_on_b, bobs_endpoint, function_id), 404, "FUNCTION_NOT_FOUND")
        await put(
            alice, f"/v1/functions/{function_id}/sharing", {"public": False, "users": ["bob"]}
        )
        assert (await submit(bob_on_b, bobs_endpoint, function_id)).status_code == 200
        await alice.client.delete(f"/v1/functions/{function_id}", headers=alice.headers)
        assert_error(await submit(bob_on_b, bobs_endpoint, function_id), 410, "FUNCTION_DELETED")
