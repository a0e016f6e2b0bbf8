"""Long polls: ``?wait_s=`` on a task and on batch status answers as soon as a task finishes.

Tasks are finished the way an agent finishes them: the state into the task's hash, then the
completion notice onto its group's results stream. Each wait is checked to be under way (the
process's watcher holds the request's watch) before the task finishes, so these tests show a
request that was blocked and woke, not one that happened to read late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.messages import stored_fields
from sdk.serialize import deserialize, serialize
from service_common.stream_watch import StreamWatcher
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.context import AppContext
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error
from .test_web_tasks import queue

BOUND_S = 20.0
"""No answer here should take this long: a hang fails the test instead of stalling it."""


@pytest.fixture
async def served(web_settings: WebSettings) -> AsyncIterator[tuple[httpx.AsyncClient, AppContext]]:
    """The app in process, and the context its lifespan built (to see its watcher)."""
    app = create_app(web_settings)
    async with app.router.lifespan_context(app) as state:
        lifespan_state = dict(state or {})

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app({**scope, "state": dict(lifespan_state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, lifespan_state["context"]


@pytest.fixture
async def carol(
    migrated_database_url: str, served: tuple[httpx.AsyncClient, AppContext]
) -> ApiUser:
    user_id, token = await create_user(migrated_database_url, "carol")
    return ApiUser(user_id, "carol", token, served[0])


async def finish(
    aredis: aioredis.Redis, keys: Keys, task: dict[str, Any], state: str, value: Any = None
) -> None:
    """Settle ``task`` (an answer of ``GET /v1/tasks/{id}``) as an agent does."""
    fields = {"state": state, "completed_at": f"{time.time():.6f}"}
    if value is not None:
        fields["result"] = serialize(value)
    await aredis.hset(keys.task(task["task_id"]), mapping=stored_fields(fields))  # type: ignore[arg-type]
    notice = {"task_id": task["task_id"], "state": state}
    await aredis.xadd(keys.task_group_results(task["task_group_id"]), notice)  # type: ignore[arg-type]


async def until_watching(watcher: StreamWatcher, count: int) -> None:
    """Return once ``count`` watches are held and a read covering them was sent."""
    for _ in range(2000):
        if watcher.watches == count and watcher.reading_all():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the watcher never held {count} watches")


async def test_a_long_poll_answers_when_the_task_finishes(
    carol: ApiUser, served: tuple[httpx.AsyncClient, AppContext], aredis: aioredis.Redis, keys: Keys
) -> None:
    (task_id,) = (await queue(carol, 1))["task_ids"]
    task = (await carol.get(f"/v1/tasks/{task_id}")).json()
    watcher = served[1].watcher
    polling = asyncio.create_task(carol.get(f"/v1/tasks/{task_id}?wait_s=30"))
    await until_watching(watcher, 1)
    assert not polling.done()
    # A notice of another state, or of another task of the group, does not answer it.
    await aredis.xadd(
        keys.task_group_results(task["task_group_id"]), {"task_id": task_id, "state": "running"}
    )
    await aredis.xadd(
        keys.task_group_results(task["task_group_id"]), {"task_id": "x", "state": "success"}
    )
    await until_watching(watcher, 1)
    assert not polling.done()
    await finish(aredis, keys, task, "success", 81)
    response = await asyncio.wait_for(polling, BOUND_S)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "success"
    assert deserialize(response.json()["result"]) == 81
    assert watcher.watches == 0


async def test_a_finished_task_answers_at_once_and_a_wait_ends_with_the_state(
    carol: ApiUser, served: tuple[httpx.AsyncClient, AppContext], aredis: aioredis.Redis, keys: Keys
) -> None:
    first, second = (await queue(carol, 2))["task_ids"]
    task = (await carol.get(f"/v1/tasks/{first}")).json()
    await finish(aredis, keys, task, "failed")
    reads = served[1].watcher.reads
    done = await asyncio.wait_for(carol.get(f"/v1/tasks/{first}?wait_s=30"), BOUND_S)
    assert done.json()["state"] == "failed"
    assert served[1].watcher.reads == reads  # answered from the first read: nothing watched
    pending = await carol.get(f"/v1/tasks/{second}?wait_s=0.2")
    assert pending.status_code == 200
    assert pending.json()["state"] == "waiting-for-ep"


async def test_batch_status_answers_when_any_task_finishes(
    carol: ApiUser, served: tuple[httpx.AsyncClient, AppContext], aredis: aioredis.Redis, keys: Keys
) -> None:
    ids = (await queue(carol, 3))["task_ids"]
    tasks = [(await carol.get(f"/v1/tasks/{t}")).json() for t in ids]
    watcher = served[1].watcher
    polls = [
        asyncio.create_task(carol.post("/v1/tasks/batch_status?wait_s=30", {"task_ids": ids})),
        asyncio.create_task(carol.post("/v1/tasks/batch_status?wait_s=30", {"task_ids": ids[2:]})),
    ]
    await until_watching(watcher, 2)
    await finish(aredis, keys, tasks[1], "cancelled")
    answer = (await asyncio.wait_for(polls[0], BOUND_S)).json()
    assert [answer["tasks"][t]["state"] for t in ids] == [
        "waiting-for-ep",
        "cancelled",
        "waiting-for-ep",
    ]
    assert answer["unknown"] == []
    await until_watching(watcher, 1)
    assert not polls[1].done()  # its task is still waiting
    await finish(aredis, keys, tasks[2], "success", 4)
    last = (await asyncio.wait_for(polls[1], BOUND_S)).json()
    assert last["tasks"][ids[2]]["state"] == "success"


async def test_wait_s_is_validated(carol: ApiUser) -> None:
    (task_id,) = (await queue(carol, 1))["task_ids"]
    for bad in ["-1", "31", "nan", "inf", "abc", ""]:
        assert_error(await carol.get(f"/v1/tasks/{task_id}?wait_s={bad}"), 422, "VALIDATION_ERROR")
        response = await carol.post(f"/v1/tasks/batch_status?wait_s={bad}", {"task_ids": [task_id]})
        assert_error(response, 422, "VALIDATION_ERROR")


async def test_plain_http_clients_long_poll_too(
    server_url: str, migrated_database_url: str, aredis: aioredis.Redis, keys: Keys
) -> None:
    _, token = await create_user(migrated_database_url, "dave")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server_url, headers=headers, timeout=BOUND_S + 5) as http:
        user = ApiUser("", "dave", token, http)
        (task_id,) = (await queue(user, 1))["task_ids"]
        task = (await http.get(f"/v1/tasks/{task_id}")).json()
        polling = asyncio.create_task(http.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}))
        # Either order is right: finished before the wait began, or woken by the notice.
        await finish(aredis, keys, task, "success", 9)
        response = await asyncio.wait_for(polling, BOUND_S)
        assert response.status_code == 200
        assert deserialize(response.json()["result"]) == 9
