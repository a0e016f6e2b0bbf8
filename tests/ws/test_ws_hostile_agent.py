"""A hostile agent (issue 11, "Done when"): whoever holds endpoint A's credential tries,
through the real gateway and the real web service, to

1. read endpoint B's tasks,
2. settle a task of B,
3. settle a task of A that was not handed to it,
4. subscribe to results,
5. call ``/v1/functions`` (or any user route),
6. open the gateway with a user's token instead;

each is refused, and nothing changes in Redis (every key of the test, stream entries and
pending lists included) or in SQL (every row of every table).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import hash_field
from service_common.agent_protocol import (
    AGENT_PATH,
    NOT_HANDED,
    DeliveryRef,
    HandBack,
    Tasks,
    Welcome,
    decode_gateway_frame,
    encode,
)
from tests.ws.gateway_helpers import (
    FRAME_WAIT_S,
    AgentClient,
    Stack,
    bearer,
    hello,
    snapshot,
    success,
    triple,
)
from web_service.store.database import open_engine
from web_service.store.models import Base


async def sql_snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with open_engine(database_url) as engine, engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            result = await conn.execute(select(table))
            rows[table.name] = sorted((tuple(r) for r in result), key=repr)
    return rows


async def refused_handshake(url: str, token: str) -> int:
    """The HTTP status a WebSocket handshake at ``url`` with ``token`` is refused with."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, additional_headers=bearer(token)):
            pass
    return caught.value.response.status_code


async def test_a_hostile_agent_with_endpoint_as_credential_is_refused_everything(
    stack: Stack, aredis: aioredis.Redis, keys: Keys, database_url: str
) -> None:
    a, credential_a = await stack.ann.endpoint("a")
    b, credential_b = await stack.bob.endpoint("b")
    fid_a, fid_b = await stack.ann.function(), await stack.bob.function(triple)
    b_group, b_tasks = await stack.bob.submit(b, fid_b, 3)
    _, a_tasks = await stack.ann.submit(a, fid_a, 2)
    async with stack.ws() as url:
        async with (
            AgentClient.connect(url, credential_b, hello("b-agent")) as agent_b,
            AgentClient.connect(url, credential_a, hello("a-agent")) as agent_a,
        ):
            [b_task] = await agent_b.take(1)  # B's agent holds one of B's tasks
            [a_other] = await agent_a.take(1)  # A's own agent holds one of A's tasks
            # 1: the hostile agent asks for far more than A has, even naming B in the URL:
            # it is served A, gets A's last task, then a new one of A's (so the reader went
            # round since), never one of B's.
            async with connect(
                f"{url}{AGENT_PATH}?endpoint_id={b}", additional_headers=bearer(credential_a)
            ) as raw:
                await raw.send(encode(hello("hostile-raw")))
                welcome = decode_gateway_frame(await raw.recv())
                assert isinstance(welcome, Welcome) and welcome.endpoint_id == a
            async with AgentClient.connect(url, credential_a, hello("hostile")) as hostile:
                assert hostile.welcome.endpoint_id == a
                [mine] = await hostile.take(1, grant=50)
                _, [a_new] = await stack.ann.submit(a, fid_a, 1)
                window = await hostile.recv(Tasks)
                assert {mine.task_id, *(t.task_id for t in window.tasks)} == {
                    *a_tasks,
                    a_new,
                } - {a_other.task_id}

                redis_before = await snapshot(aredis, keys)
                sql_before = await sql_snapshot(database_url)

                # 1 (HTTP): B's tasks and endpoint are not A's to read.
                for path in (*(f"/v1/tasks/{t}" for t in b_tasks), f"/v1/endpoints/{b}"):
                    reply = await stack.ann.http.get(path, headers=bearer(credential_a))
                    assert reply.status_code == 401, (path, reply.text)

                # 2, 3: settle B's task and A's task held by another connection, with their
                # real delivery ids; hand them back too.
                answer = await hostile.report([success(b_task), success(a_other)])
                assert answer.delivery_ids == ()
                assert [(r.task_id, r.code) for r in answer.refused] == [
                    (b_task.task_id, NOT_HANDED),
                    (a_other.task_id, NOT_HANDED),
                ]
                await hostile.send(HandBack((b_task.ref, a_other.ref)))

                # 4: no results, neither pushed nor polled.
                assert await refused_handshake(url + "/v1/results", credential_a) == 401
                reply = await stack.ann.http.get(
                    f"/v1/task_groups/{b_group}", headers=bearer(credential_a)
                )
                assert reply.status_code == 401
                # A text command of the results protocol on the agent's connection is a
                # broken frame: the gateway closes the connection.
                await hostile.ws.send('{"type": "subscribe", "task_group_id": "x", "cursor": "0"}')
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(FRAME_WAIT_S):
                        while True:
                            await hostile.ws.recv()
                assert hostile.ws.close_code == 1002

            # 5: user routes refuse the credential.
            for method, path, body in (
                ("GET", "/v1/functions", None),
                ("POST", "/v1/functions", {"function_name": "f", "function_code": "st\nf:x"}),
                ("GET", "/v1/endpoints", None),
                ("POST", f"/v1/endpoints/{a}/submit", {"tasks": []}),
                ("POST", f"/v1/endpoints/{a}/credential", None),
            ):
                reply = await stack.ann.http.request(
                    method, path, json=body, headers=bearer(credential_a)
                )
                assert reply.status_code == 401, (method, path, reply.text)

            # 6: a user's token does not open the gateway.
            assert await refused_handshake(url + AGENT_PATH, stack.ann_token) == 401

            redis_after = await snapshot(aredis, keys)
            sql_after = await sql_snapshot(database_url)

    assert redis_after == redis_before
    assert sql_after == sql_before
    assert await aredis.hget(keys.task(b_task.task_id), hash_field("state")) == "running"
    assert await aredis.hget(keys.task(a_other.task_id), hash_field("state")) == "running"
    pending = await aredis.xpending(keys.endpoint_tasks(b), AGENT_GROUP)
    assert pending["consumers"] == [{"name": "b-agent", "pending": 1}]


async def test_an_outcome_not_handed_to_the_connection_is_refused_and_changes_nothing(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    """Item 3 with a forged delivery id: the agent's own task under another attempt."""
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    await stack.ann.submit(eid, fid, 2)
    async with stack.ws() as url:
        async with (
            AgentClient.connect(url, credential, hello("one")) as one,
            AgentClient.connect(url, credential, hello("two")) as two,
        ):
            [mine] = await one.take(1)
            [theirs] = await two.take(1)
            before = await snapshot(aredis, keys)
            forged = DeliveryRef(mine.task_id, mine.delivery_id.replace("/1", "/2"))
            answer = await one.report([success(theirs), success(forged)])
            after = await snapshot(aredis, keys)

    assert [r.code for r in answer.refused] == [NOT_HANDED, NOT_HANDED]
    assert answer.delivery_ids == ()
    assert after == before
