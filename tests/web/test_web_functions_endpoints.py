"""Registering functions and endpoints; what a user does not own answers 404."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from sdk.keys import Keys
from sdk.serialize import SOURCE_CODE, serialize

from .helpers import ApiUser, assert_error


def double(x: int) -> int:
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


DOUBLE = serialize(double, SOURCE_CODE)
TRIPLE = serialize(triple, SOURCE_CODE)


async def register(user: ApiUser, code: str = DOUBLE, name: str = "double") -> str:
    response = await user.post("/v1/functions", {"function_name": name, "function_code": code})
    assert response.status_code == 200, response.text
    function_id: str = response.json()["function_id"]
    return function_id


async def test_same_code_same_user_same_id(alice: ApiUser) -> None:
    first = await register(alice)
    assert await register(alice, name="renamed") == first
    assert await register(alice, TRIPLE, "triple") != first


async def test_same_code_other_user_other_id(alice: ApiUser, bob: ApiUser) -> None:
    assert await register(alice) != await register(bob)


async def test_register_caches_the_code_for_agents(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    function_id = await register(alice)
    assert await aredis.get(keys.function_code(function_id)) == DOUBLE


async def test_get_function(alice: ApiUser, bob: ApiUser) -> None:
    response = await alice.post(
        "/v1/functions",
        {"function_name": "double", "function_code": DOUBLE, "description": "doubles"},
    )
    function_id = response.json()["function_id"]
    body = (await alice.get(f"/v1/functions/{function_id}")).json()
    assert body["function_id"] == function_id
    assert body["function_name"] == "double"
    assert body["description"] == "doubles"
    assert isinstance(body["created_at"], float)
    assert_error(await bob.get(f"/v1/functions/{function_id}"), 404, "FUNCTION_NOT_FOUND")
    assert_error(await alice.get(f"/v1/functions/{uuid.uuid4()}"), 404, "FUNCTION_NOT_FOUND")
    assert_error(await alice.get("/v1/functions/not-an-id"), 404, "FUNCTION_NOT_FOUND")


async def test_function_registration_is_validated(alice: ApiUser) -> None:
    data_buffer = serialize({"not": "code"})
    for body in [
        {"function_name": "f"},
        {"function_name": "f", "function_code": 12},
        {"function_name": "f", "function_code": data_buffer},
        {"function_name": "f", "function_code": "no header"},
        {"function_name": "", "function_code": DOUBLE},
        {"function_name": "f" * 256, "function_code": DOUBLE},
        ["not", "an", "object"],
    ]:
        assert_error(await alice.post("/v1/functions", body), 422, "VALIDATION_ERROR")
    assert_error(await alice.post("/v1/functions", content=b"{nope"), 400, "BAD_REQUEST")
    assert_error(await alice.post("/v1/functions", content=b""), 400, "BAD_REQUEST")


async def test_same_endpoint_name_same_id(alice: ApiUser, bob: ApiUser) -> None:
    first = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()
    again = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()
    other = (await alice.post("/v1/endpoints", {"name": "cpu"})).json()
    bobs = (await bob.post("/v1/endpoints", {"name": "gpu"})).json()
    assert first == again
    assert first["name"] == "gpu"
    assert uuid.UUID(first["endpoint_id"])
    assert len({first["endpoint_id"], other["endpoint_id"], bobs["endpoint_id"]}) == 3
    assert_error(await alice.post("/v1/endpoints", {"name": " "}), 422, "VALIDATION_ERROR")


async def test_endpoint_status_is_the_heartbeat(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    endpoint_id = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    body = (await alice.get(f"/v1/endpoints/{endpoint_id}")).json()
    assert body == {"endpoint_id": endpoint_id, "name": "gpu", "status": None}

    heartbeat: dict[FieldT, EncodableT] = {
        "agent": "a1",
        "host": "node1",
        "workers": "4",
        "running": "1",
    }
    await aredis.hset(keys.endpoint_status(endpoint_id), mapping=heartbeat)
    body = (await alice.get(f"/v1/endpoints/{endpoint_id}")).json()
    assert body["status"] == heartbeat

    assert_error(await bob.get(f"/v1/endpoints/{endpoint_id}"), 404, "ENDPOINT_NOT_FOUND")
    assert_error(await alice.get(f"/v1/endpoints/{uuid.uuid4()}"), 404, "ENDPOINT_NOT_FOUND")
