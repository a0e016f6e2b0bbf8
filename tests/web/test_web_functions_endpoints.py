"""Registering functions and endpoints; what a user does not own answers 404."""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import stored_fields
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
        # PostgreSQL's text holds no NUL: a client's mistake, not a 500
        {"function_name": "f\x00", "function_code": DOUBLE},
        {"function_name": "f", "function_code": DOUBLE + "\x00"},
        {"function_name": "f", "function_code": DOUBLE, "description": "\x00"},
        ["not", "an", "object"],
    ]:
        assert_error(await alice.post("/v1/functions", body), 422, "VALIDATION_ERROR")
    for path, body in [
        ("/v1/endpoints", {"name": "e\x00"}),
        ("/v3/endpoints", {"endpoint_name": "e\x00"}),
        ("/v3/functions", {"function_name": "f", "function_code": "\x00", "serialized": False}),
        ("/v3/functions", {"function_name": "é", "function_code": "", "serialized": False}),
        ("/v3/functions", {"function_name": "f", "function_code": DOUBLE, "description": "\x00"}),
    ]:
        assert_error(await alice.post(path, body), 422, "VALIDATION_ERROR")
    assert_error(await alice.post("/v1/functions", content=b"{nope"), 400, "BAD_REQUEST")
    assert_error(await alice.post("/v1/functions", content=b""), 400, "BAD_REQUEST")


async def test_same_endpoint_name_same_id(alice: ApiUser, bob: ApiUser) -> None:
    first = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()
    again = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()
    other = (await alice.post("/v1/endpoints", {"name": "cpu"})).json()
    bobs = (await bob.post("/v1/endpoints", {"name": "gpu"})).json()
    credential = first.pop("credential")  # shown by the request that created it, only
    assert credential.startswith("fxep_") and "credential" not in again
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
    assert body["endpoint_id"] == endpoint_id
    assert (body["name"], body["owner_id"], body["owned"]) == ("gpu", alice.user_id, True)
    assert body["status"] is None
    status = (await alice.get(f"/v1/endpoints/{endpoint_id}/status")).json()
    assert status == {
        "endpoint_id": endpoint_id,
        "online": False,
        "queued": 0,
        "in_flight": 0,
        "workers": None,
        "running": None,
        "capacity": None,
        "last_heartbeat": None,
        "agent": None,
        "host": None,
        "version": None,
        "engine": None,
    }

    heartbeat: dict[FieldT, EncodableT] = {
        "agent": "a1",
        "host": "node1",
        "version": "0.1.0",
        "engine": "process",
        "workers": "4",
        "capacity": "8",
        "running": "1",
        "heartbeat_at": "1700000000.5",
    }
    await aredis.hset(keys.endpoint_status(endpoint_id), mapping=heartbeat)
    body = (await alice.get(f"/v1/endpoints/{endpoint_id}")).json()
    assert body["status"] == heartbeat
    status = (await alice.get(f"/v1/endpoints/{endpoint_id}/status")).json()
    assert status["online"] is True
    assert (status["workers"], status["capacity"], status["running"]) == (4, 8, 1)
    assert status["last_heartbeat"] == 1700000000.5
    assert (status["agent"], status["host"], status["version"], status["engine"]) == (
        "a1",
        "node1",
        "0.1.0",
        "process",
    )

    assert_error(await bob.get(f"/v1/endpoints/{endpoint_id}"), 404, "ENDPOINT_NOT_FOUND")
    assert_error(await bob.get(f"/v1/endpoints/{endpoint_id}/status"), 404, "ENDPOINT_NOT_FOUND")
    assert_error(await alice.get(f"/v1/endpoints/{uuid.uuid4()}"), 404, "ENDPOINT_NOT_FOUND")


async def test_status_counts_queued_and_delivered_tasks(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    """Queued: entries no agent has read; in flight: read by an agent, not yet completed."""
    function_id = await register(alice)
    endpoint_id = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    task = {"function_id": function_id, "payload": "p"}
    response = await alice.post(f"/v1/endpoints/{endpoint_id}/submit", {"tasks": [task] * 5})
    assert response.status_code == 200, response.text
    stream = keys.endpoint_tasks(endpoint_id)
    await aredis.xgroup_create(stream, AGENT_GROUP, id="0")
    await aredis.xreadgroup(AGENT_GROUP, "agent-1", {stream: ">"}, count=2)
    status = (await alice.get(f"/v1/endpoints/{endpoint_id}/status")).json()
    assert (status["queued"], status["in_flight"]) == (3, 2)


async def test_lists_of_functions_and_endpoints_page(alice: ApiUser, bob: ApiUser) -> None:
    ids = [await register(alice, serialize(f, SOURCE_CODE), f.__name__) for f in (double, triple)]
    await register(bob)
    listed = (await alice.get("/v1/functions")).json()["functions"]
    assert [item["function_id"] for item in listed] == ids
    assert listed[0]["function_name"] == "double" and listed[0]["owned"] is True
    assert "function_code" not in listed[0]
    page = (await alice.get("/v1/functions?limit=1&offset=1")).json()["functions"]
    assert [item["function_id"] for item in page] == ids[1:]

    names = ["a", "b", "c"]
    endpoint_ids = [
        (await alice.post("/v1/endpoints", {"name": n})).json()["endpoint_id"] for n in names
    ]
    await bob.post("/v1/endpoints", {"name": "bobs"})
    listed = (await alice.get("/v1/endpoints")).json()["endpoints"]
    assert [item["endpoint_id"] for item in listed] == endpoint_ids
    page = (await alice.get("/v1/endpoints?limit=2")).json()["endpoints"]
    assert [item["name"] for item in page] == ["a", "b"]
    for query in ["limit=0", "limit=1001", "limit=x", "offset=-1", "limit=1.5"]:
        assert_error(await alice.get(f"/v1/endpoints?{query}"), 422, "VALIDATION_ERROR")


async def test_the_owner_reads_the_code(alice: ApiUser) -> None:
    function_id = await register(alice)
    body = (await alice.get(f"/v1/functions/{function_id}")).json()
    assert body["function_code"] == DOUBLE
    assert (body["owner_id"], body["owned"], body["public"]) == (alice.user_id, True, False)


async def test_endpoints_status_lists_each_usable_endpoint_with_load_and_what_it_finished(
    alice: ApiUser, bob: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    """``GET /v1/endpoints/status``: own and shared endpoints only, each with its heartbeat,
    its queue, and the caller's tasks it finished in the window."""
    function_id = await register(alice)
    gpu = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    cpu = (await alice.post("/v1/endpoints", {"name": "cpu"})).json()["endpoint_id"]
    bobs = (await bob.post("/v1/endpoints", {"name": "bobs"})).json()["endpoint_id"]
    shared = (await bob.post("/v1/endpoints", {"name": "shared"})).json()["endpoint_id"]
    answer = await bob.client.put(f"/v1/endpoints/{shared}/sharing", json={"users": ["alice"]},
                                  headers=bob.headers)  # fmt: skip
    assert answer.status_code == 200, answer.text
    task = {"function_id": function_id, "payload": "p"}
    submitted = await alice.post(f"/v1/endpoints/{gpu}/submit", {"tasks": [task] * 4})
    task_ids = submitted.json()["task_ids"]
    # One task settled as the gateway settles it (state and completion time on its hash),
    # its stream entry gone; the other three stay queued.
    now = time.time()
    await aredis.hset(keys.task(task_ids[0]), mapping=stored_fields({"state": "success",
                                                       "completed_at": str(now - 5)}))  # fmt: skip
    stream = keys.endpoint_tasks(gpu)
    entries = await aredis.xrange(stream, count=1)
    assert entries
    await aredis.xdel(stream, str(entries[0][0]))
    heartbeat: dict[FieldT, EncodableT] = {"agent": "a1", "host": "node1", "workers": "4",
                                           "running": "0", "heartbeat_at": str(now)}  # fmt: skip
    await aredis.hset(keys.endpoint_status(gpu), mapping=heartbeat)

    body = (await alice.get("/v1/endpoints/status")).json()
    assert (body["window_s"], body["bucket_s"]) == (900, 10)
    assert abs(body["now"] - time.time()) < 60
    views = {view["endpoint_id"]: view for view in body["endpoints"]}
    assert list(views) == [gpu, cpu, shared]  # never bob's own
    assert bobs not in views
    assert (views[gpu]["name"], views[gpu]["owned"], views[shared]["owned"]) == ("gpu", True, False)
    assert (views[gpu]["online"], views[gpu]["host"], views[gpu]["workers"]) == (True, "node1", 4)
    assert (views[gpu]["queued"], views[gpu]["in_flight"], views[gpu]["finished"]) == (3, 0, 1)
    assert len(views[gpu]["tasks_per_s"]) == 90 and sum(views[gpu]["tasks_per_s"]) == 0.1
    assert (views[cpu]["online"], views[cpu]["queued"], views[cpu]["finished"]) == (False, 0, 0)
    assert views[cpu]["last_heartbeat"] is None

    # bob submitted nothing: the shared endpoint's finished counts his tasks only
    theirs = (await bob.get("/v1/endpoints/status")).json()["endpoints"]
    assert [(v["endpoint_id"], v["finished"]) for v in theirs] == [(bobs, 0), (shared, 0)]
    page = (await alice.get("/v1/endpoints/status?limit=1&offset=1")).json()["endpoints"]
    assert [view["endpoint_id"] for view in page] == [cpu]
    assert_error(await alice.get("/v1/endpoints/status?limit=0"), 422, "VALIDATION_ERROR")
