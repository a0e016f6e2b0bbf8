"""The result server end to end: the real web service (for tokens and task groups) under
uvicorn, real Redis, the server on port 0 and a real WebSocket client. Completions are
written into Redis the way an endpoint agent writes them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sdk.keys import Keys
from sdk.messages import exception_record, stored_fields
from sdk.serialize import deserialize, pack_payload, serialize
from tests.conftest import free_port
from tests.private_redis import PrivateRedis
from tests.ws.gateway_helpers import web_service
from web_service.accounts import create_user
from web_service.schema import upgrade
from ws_service.auth import Authenticator
from ws_service.fanout import REDIS_CONNECTIONS
from ws_service.server import ResultServer
from ws_service.settings import WsSettings

FRAME_WAIT_S = 10.0
"""A safety net so a broken server fails a test instead of hanging it; never a timing claim."""


def double(x: int) -> int:
    return 2 * x


@dataclass(frozen=True)
class User:
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Stack:
    web_url: str
    ws_url: str
    settings: WsSettings
    ann: User
    bob: User


@pytest.fixture
async def web(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[str]:
    """The real web service on a free loopback port, with a migrated database."""
    await asyncio.to_thread(upgrade, database_url)
    async with web_service(database_url, redis_url, key_prefix) as url:
        yield url


@pytest.fixture
async def stack(
    web: str, database_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Stack]:
    ann = User(*await create_user(database_url, "ann"))
    bob = User(*await create_user(database_url, "bob"))
    settings = WsSettings(
        redis_url=redis_url, web_url=web, key_prefix=key_prefix, port=0, block_ms=1000
    )
    async with ResultServer(settings) as server:
        yield Stack(web, f"ws://127.0.0.1:{server.port}/v1/results", settings, ann, bob)


async def submit(stack: Stack, user: User, count: int) -> tuple[str, list[str]]:
    """Submit ``count`` tasks through the web service; returns the group id and task ids."""
    async with httpx.AsyncClient(base_url=stack.web_url, headers=user.headers) as http:
        fn = await http.post(
            "/v1/functions", json={"function_name": "double", "function_code": serialize(double)}
        )
        fn.raise_for_status()
        ep = await http.post("/v1/endpoints", json={"name": "gpu-node"})
        ep.raise_for_status()
        tasks = [
            {"function_id": fn.json()["function_id"], "payload": pack_payload((i,))}
            for i in range(count)
        ]
        sub = await http.post(
            f"/v1/endpoints/{ep.json()['endpoint_id']}/submit", json={"tasks": tasks}
        )
        sub.raise_for_status()
        body: dict[str, Any] = sub.json()
        return body["task_group_id"], body["task_ids"]


async def complete(
    aredis: aioredis.Redis,
    keys: Keys,
    group: str,
    outcomes: list[tuple[str, int | Exception]],
) -> None:
    """Store results and append completion notices in one pipeline, as an agent does."""
    async with aredis.pipeline(transaction=False) as pipe:
        for task_id, outcome in outcomes:
            if isinstance(outcome, Exception):
                fields = {"state": "failed", "exception": json.dumps(exception_record(outcome))}
            else:
                fields = {"state": "success", "result": serialize(outcome)}
            fields["completed_at"] = str(time.time())
            pipe.hset(keys.task(task_id), mapping=stored_fields(fields))
            pipe.xadd(
                keys.task_group_results(group), {"task_id": task_id, "state": fields["state"]}
            )
        await pipe.execute()


def open_ws(stack: Stack, user: User) -> connect:
    return connect(
        stack.ws_url, additional_headers=user.headers, max_size=stack.settings.max_frame_bytes
    )


async def send(ws: ClientConnection, frame: dict[str, Any] | str) -> None:
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(FRAME_WAIT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
        return frame


async def subscribe(ws: ClientConnection, group: str, cursor: str = "0") -> None:
    await send(ws, {"type": "subscribe", "task_group_id": group, "cursor": cursor})
    assert await recv(ws) == {"type": "subscribed", "task_group_id": group, "cursor": cursor}


async def results(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Receive ``results`` frames until ``count`` items arrived; returns the frames."""
    frames: list[dict[str, Any]] = []
    while sum(len(f["results"]) for f in frames) < count:
        frame = await recv(ws)
        assert frame["type"] == "results", frame
        frames.append(frame)
    return frames


def items_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for frame in frames for item in frame["results"]]


async def test_results_are_pushed_as_tasks_complete(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, (t1, t2) = await submit(stack, stack.ann, 2)
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group)
        await complete(aredis, keys, group, [(t1, 42)])
        [first] = await results(ws, 1)
        await complete(aredis, keys, group, [(t2, ValueError("bad input"))])
        [second] = await results(ws, 1)

    assert first["task_group_id"] == group
    [item] = first["results"]
    assert (item["task_id"], item["state"], deserialize(item["result"])) == (t1, "success", 42)
    assert first["cursor"] == item["cursor"]
    [failed] = second["results"]
    assert (failed["task_id"], failed["state"]) == (t2, "failed")
    assert failed["exception"]["type"] == "ValueError"
    assert failed["exception"]["message"] == "bad input"
    assert "result" not in failed


async def test_subscribing_after_completion_replays_everything_in_completion_order(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, task_ids = await submit(stack, stack.ann, 3)
    order = [task_ids[2], task_ids[0], task_ids[1]]
    for value, task_id in enumerate(order):
        await complete(aredis, keys, group, [(task_id, value)])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group, "0")
        items = items_of(await results(ws, 3))

    assert [i["task_id"] for i in items] == order
    assert [deserialize(i["result"]) for i in items] == [0, 1, 2]


async def test_resubscribing_from_a_cursor_yields_only_later_results(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, task_ids = await submit(stack, stack.ann, 4)
    await complete(aredis, keys, group, [(t, 1) for t in task_ids[:2]])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group)
        frames = await results(ws, 2)
    cursor = frames[-1]["cursor"]
    await complete(aredis, keys, group, [(t, 2) for t in task_ids[2:]])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group, cursor)
        [frame] = await results(ws, 2)

    assert [i["task_id"] for i in frame["results"]] == task_ids[2:]
    assert [deserialize(i["result"]) for i in frame["results"]] == [2, 2]


async def test_many_ready_results_are_batched_into_few_frames(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, task_ids = await submit(stack, stack.ann, 120)
    await complete(aredis, keys, group, [(t, i) for i, t in enumerate(task_ids)])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group)
        frames = await results(ws, 120)

    assert len(frames) < 120
    assert len(frames) == 1  # everything was ready for the first read
    assert [i["task_id"] for i in items_of(frames)] == task_ids
    assert [deserialize(i["result"]) for i in items_of(frames)] == list(range(120))


async def test_batches_never_pass_batch_max(
    web: str, database_url: str, redis_url: str, key_prefix: str, aredis: aioredis.Redis
) -> None:
    user = User(*await create_user(database_url, "ann"))
    settings = WsSettings(
        redis_url=redis_url, web_url=web, key_prefix=key_prefix, port=0, batch_max=25
    )
    async with ResultServer(settings) as server:
        stack = Stack(web, f"ws://127.0.0.1:{server.port}/v1/results", settings, user, user)
        group, task_ids = await submit(stack, user, 100)
        await complete(aredis, Keys(key_prefix), group, [(t, 0) for t in task_ids])
        async with open_ws(stack, user) as ws:
            await subscribe(ws, group)
            frames = await results(ws, 100)

    assert [len(f["results"]) for f in frames] == [25, 25, 25, 25]
    assert [i["task_id"] for i in items_of(frames)] == task_ids


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"}])
async def test_a_missing_or_bad_token_is_refused_at_the_handshake(
    stack: Stack, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(stack.ws_url, additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_frames_are_not_compressed_unless_the_service_is_told_to(stack: Stack) -> None:
    """A client that offers permessage-deflate (websockets does by default) gets none."""
    async with open_ws(stack, stack.ann) as ws:
        assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.protocol.extensions == []
        group, _ = await submit(stack, stack.ann, 1)
        await subscribe(ws, group)
    deflate = dataclasses.replace(stack.settings, compression="deflate")
    async with ResultServer(deflate) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/results"
        async with connect(url, additional_headers=stack.ann.headers) as ws:
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            await subscribe(ws, group)


async def test_an_unknown_path_is_refused(stack: Stack) -> None:
    url = stack.ws_url.replace("/v1/results", "/v1/other")
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=stack.ann.headers):
            pass
    assert info.value.response.status_code == 404


async def test_another_users_task_group_gives_an_error_frame(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, [task_id] = await submit(stack, stack.ann, 1)
    await complete(aredis, keys, group, [(task_id, 7)])
    async with open_ws(stack, stack.bob) as ws:
        await send(ws, {"type": "subscribe", "task_group_id": group, "cursor": "0"})
        error = await recv(ws)
        # the connection stays usable: bob's own group works on it
        own_group, [own_task] = await submit(stack, stack.bob, 1)
        await complete(aredis, keys, own_group, [(own_task, 8)])
        await subscribe(ws, own_group)
        [frame] = await results(ws, 1)

    assert error["type"] == "error"
    assert error["code"] == "NOT_FOUND"
    assert error["task_group_id"] == group
    assert [i["task_id"] for i in frame["results"]] == [own_task]
    assert frame["task_group_id"] == own_group


async def test_a_group_whose_tasks_are_in_redis_is_known_without_asking_the_web_service(
    stack: Stack, aredis: aioredis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first task's hash names its owner; someone else's group, or one Redis no longer
    holds, is still asked of the web service (which refuses the first, allows the second)."""
    asked: list[str] = []
    real_get = Authenticator._get

    async def recording_get(self: Authenticator, path: str, token: str) -> dict[str, Any]:
        asked.append(path)
        return await real_get(self, path, token)

    monkeypatch.setattr(Authenticator, "_get", recording_get)
    group, [task_id] = await submit(stack, stack.ann, 1)
    expired, [other_task] = await submit(stack, stack.ann, 1)
    await aredis.delete(keys.task_group_tasks(expired))
    await complete(aredis, keys, group, [(task_id, 3)])
    await complete(aredis, keys, expired, [(other_task, 4)])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group)
        [frame] = await results(ws, 1)
        groups_asked = [p for p in asked if p.startswith("/v1/task_groups/")]
        await subscribe(ws, expired)
        [expired_frame] = await results(ws, 1)
    async with open_ws(stack, stack.bob) as ws:
        await send(ws, {"type": "subscribe", "task_group_id": group, "cursor": "0"})
        refused = await recv(ws)

    assert groups_asked == []
    assert [i["task_id"] for i in frame["results"]] == [task_id]
    assert [i["task_id"] for i in expired_frame["results"]] == [other_task]
    assert (refused["type"], refused["code"]) == ("error", "NOT_FOUND")
    assert [p for p in asked if p.startswith("/v1/task_groups/")] == [
        f"/v1/task_groups/{expired}?limit=0", f"/v1/task_groups/{group}?limit=0"
    ]  # fmt: skip


async def test_malformed_frames_get_error_frames_and_the_connection_survives(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, [task_id] = await submit(stack, stack.ann, 1)
    await complete(aredis, keys, group, [(task_id, 5)])
    bad_frames: list[dict[str, Any] | str] = [
        "{oops",
        "[]",
        {"type": "shout"},
        {"type": "subscribe", "task_group_id": 12},
        {"type": "subscribe", "task_group_id": group, "cursor": "later"},
    ]
    async with open_ws(stack, stack.ann) as ws:
        errors = []
        for bad in bad_frames:
            await send(ws, bad)
            errors.append(await recv(ws))
        await subscribe(ws, group)
        [frame] = await results(ws, 1)

    assert [(e["type"], e["code"]) for e in errors] == [("error", "BAD_FRAME")] * len(bad_frames)
    assert errors[-1]["task_group_id"] == group
    assert frame["results"][0]["task_id"] == task_id


async def test_unsubscribe_stops_the_pushes_of_that_group(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    g1, [t1] = await submit(stack, stack.ann, 1)
    g2, [t2] = await submit(stack, stack.ann, 1)
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, g1)
        await send(ws, {"type": "unsubscribe", "task_group_id": g1})
        await complete(aredis, keys, g1, [(t1, 1)])
        await subscribe(ws, g2)  # frames are handled in order: g1 is gone by now
        await complete(aredis, keys, g2, [(t2, 2)])
        frame = await recv(ws)

    assert frame["type"] == "results"
    assert frame["task_group_id"] == g2


async def test_subscribing_again_replaces_the_cursor(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    group, task_ids = await submit(stack, stack.ann, 2)
    await complete(aredis, keys, group, [(task_ids[0], 1)])
    async with open_ws(stack, stack.ann) as ws:
        await subscribe(ws, group)
        [first] = await results(ws, 1)
        await subscribe(ws, group, "0")  # replay from the start on the same connection
        [replayed] = await results(ws, 1)

    assert replayed["results"] == first["results"]


async def test_a_redis_outage_delays_results_but_never_closes_the_connection(
    web: str, database_url: str, redis_url: str, key_prefix: str
) -> None:
    user = User(*await create_user(database_url, "ann"))
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = WsSettings(redis_url=dead_redis, web_url=web, key_prefix=key_prefix, port=0)
    async with ResultServer(settings) as server:
        stack = Stack(web, f"ws://127.0.0.1:{server.port}/v1/results", settings, user, user)
        group, _ = await submit(stack, user, 1)
        async with open_ws(stack, user) as ws:
            await subscribe(ws, group)  # its reads fail and are retried with backoff
            await send(ws, "not json")
            error = await recv(ws)
            await send(ws, {"type": "unsubscribe", "task_group_id": group})
            await subscribe(ws, group)

    assert error["code"] == "BAD_FRAME"


async def test_closing_the_server_closes_its_connections(stack: Stack) -> None:
    settings = stack.settings
    async with ResultServer(settings) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/results"
        ws = await connect(url, additional_headers=stack.ann.headers)
    with pytest.raises(ConnectionClosed):
        await ws.recv()


async def test_an_unreachable_web_service_answers_the_handshake_with_503(
    redis_url: str, key_prefix: str
) -> None:
    settings = WsSettings(
        redis_url=redis_url,
        web_url=f"http://127.0.0.1:{free_port()}",
        key_prefix=key_prefix,
        port=0,
    )
    async with ResultServer(settings) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/results"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers={"Authorization": "Bearer t"}):
                pass
    assert info.value.response.status_code == 503
    assert info.value.response.headers["Retry-After"] == "1"


async def test_a_redis_restart_pauses_delivery_and_resumes_from_the_cursor(
    web: str,
    database_url: str,
    key_prefix: str,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    user = User(*await create_user(database_url, "ann"))
    keys = Keys(key_prefix)
    settings = WsSettings(
        redis_url=private_redis.url, web_url=web, key_prefix=key_prefix, port=0, block_ms=200
    )

    async def agent_writes(outcomes: list[tuple[str, int | Exception]]) -> None:
        # A fresh connection each time, as the agent's would be after the restart.
        agent_side = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
        try:
            await complete(agent_side, keys, group, outcomes)
        finally:
            await agent_side.aclose()

    async with ResultServer(settings) as server:
        stack = Stack(web, f"ws://127.0.0.1:{server.port}/v1/results", settings, user, user)
        group, task_ids = await submit(stack, user, 4)
        async with open_ws(stack, user) as ws:
            await subscribe(ws, group)
            await agent_writes([(t, i) for i, t in enumerate(task_ids[:2])])
            before = items_of(await results(ws, 2))
            await asyncio.to_thread(
                private_redis.restart, down_s=0.5
            )  # the subscription's reads fail meanwhile
            await agent_writes([(t, 9) for t in task_ids[2:]])
            after = items_of(await results(ws, 2))
            await send(ws, "not json")  # the connection is still open and serving
            assert (await recv(ws))["code"] == "BAD_FRAME"
        assert server.redis_outage.outages >= 1 and not server.redis_outage.down

    assert [i["task_id"] for i in before + after] == task_ids  # none lost, none repeated
    assert [deserialize(i["result"]) for i in after] == [9, 9]
    assert "Traceback" not in caplog.text
    starts = [r for r in caplog.records if r.getMessage().startswith("Redis is unavailable")]
    assert len(starts) == server.redis_outage.outages  # one line per outage, not per retry


async def test_many_subscriptions_share_one_read_and_a_bounded_number_of_redis_connections(
    stack: Stack, aredis: aioredis.Redis, keys: Keys, key_prefix: str
) -> None:
    """200 subscriptions (20 connections x 10 task groups) on one copy: every result
    reaches every subscriber once, and the copy's Redis connections stay within the bound
    that does not grow with subscriptions."""
    name = f"ws-{key_prefix}"
    settings = dataclasses.replace(stack.settings, client_name=name)
    groups = [await submit(stack, stack.ann, 3) for _ in range(10)]
    all_tasks = {task_id for _, task_ids in groups for task_id in task_ids}
    async with ResultServer(settings) as server, contextlib.AsyncExitStack() as exit_stack:
        url = f"ws://127.0.0.1:{server.port}/v1/results"
        sockets = [
            await exit_stack.enter_async_context(connect(url, additional_headers=stack.ann.headers))
            for _ in range(20)
        ]
        for ws in sockets:
            for group, _ in groups:
                await subscribe(ws, group)
        assert server.reader.subscriptions == 200
        for group, task_ids in groups:
            await complete(aredis, keys, group, [(t, i) for i, t in enumerate(task_ids)])
        for ws in sockets:
            received = [item["task_id"] for item in items_of(await results(ws, len(all_tasks)))]
            assert len(received) == len(all_tasks) and set(received) == all_tasks
        clients = [c for c in await aredis.client_list() if c.get("name") == name]
        assert 1 <= len(clients) <= REDIS_CONNECTIONS + settings.gateway_redis_connections
