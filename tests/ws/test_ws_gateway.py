"""The endpoint gateway end to end: the real web service (credentials, functions, submits,
cancels, status) under uvicorn, real Redis, ws_service on a free port, and agents that are
lightweight protocol clients (:mod:`tests.ws.gateway_helpers`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import hash_field, hash_fields
from sdk.serialize import deserialize
from service_common.agent_protocol import (
    AGENT_PATH,
    NOT_HANDED,
    UNAVAILABLE,
    Cancel,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    Functions,
    HandBack,
    NeedCode,
    Outcomes,
    Settled,
    Status,
    Task,
    Tasks,
    Withdraw,
    Withdrawn,
    decode_gateway_frame,
)
from tests.private_redis import PrivateRedis
from tests.ws.gateway_helpers import (
    FRAME_WAIT_S,
    AgentClient,
    Owner,
    Stack,
    bearer,
    hello,
    success,
    triple,
    unique,
    web_service,
)
from web_service.accounts import create_user
from web_service.schema import upgrade
from ws_service.gateway import session
from ws_service.server import ResultServer
from ws_service.settings import WsSettings


async def until(check: Any, what: str) -> None:
    """Wait for ``check()`` (sync or async) to be true, with a safety-net deadline."""
    async with asyncio.timeout(FRAME_WAIT_S):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)


# -- handshake -----------------------------------------------------------------------------


async def test_only_a_live_endpoint_credential_opens_the_gateway(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    async with stack.ws() as url:
        async with AgentClient.connect(url, credential) as agent:
            assert agent.welcome.endpoint_id == eid
            assert agent.welcome.lost == ()
        refused = {
            "missing": None,
            "user token": stack.ann_token,
            "unknown": "fxep_" + "x" * 43,
        }
        revoked = await stack.ann.endpoint("revoked")
        await stack.ann.http.delete(f"/v1/endpoints/{revoked[0]}/credential")
        refused["revoked"] = revoked[1]
        for what, token in refused.items():
            headers = {} if token is None else bearer(token)
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url + AGENT_PATH, additional_headers=headers):
                    pass
            assert caught.value.response.status_code == 401, what


async def test_a_connection_that_never_says_hello_is_closed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "HELLO_TIMEOUT_S", 0.3)
    _, credential = await stack.ann.endpoint()
    async with stack.ws() as url:
        async with connect(url + AGENT_PATH, additional_headers=bearer(credential)) as silent:
            error = decode_gateway_frame(await asyncio.wait_for(silent.recv(), FRAME_WAIT_S))
            assert isinstance(error, Error) and error.code == "UNEXPECTED_FRAME"
            assert error.message == "no hello within 0.3 s of the handshake"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(silent.recv(), FRAME_WAIT_S)
        assert silent.close_code == 1002


# -- windows, code, settle -----------------------------------------------------------------


async def test_windows_keep_to_credit_and_code_is_sent_once(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, task_ids = await stack.ann.submit(eid, fid, 5)
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        first = await agent.take(2)
        running = await aredis.xpending(keys.endpoint_tasks(eid), AGENT_GROUP)
        rest = await agent.take(3)

    assert [t.task_id for t in first + rest] == task_ids
    assert len(first) == 2 and running["pending"] == 2
    assert running["consumers"] == [{"name": "agent-1", "pending": 2}]
    assert list(agent.codes) == [fid]  # the first window carried it, the second none
    assert {t.attempt for t in first + rest} == {1}
    states = [await aredis.hget(keys.task(tid), hash_field("state")) for tid in task_ids]
    assert states == ["running"] * 5


async def test_a_grant_that_finds_the_stream_empty_is_told_so_once(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        await agent.send(Credit(2))
        told = decode_gateway_frame(await asyncio.wait_for(agent.ws.recv(), FRAME_WAIT_S))
        assert told == Tasks(())  # the word: nothing queued for that grant
        # Once per grant: the reader looks again (its wait is 1 s) and says nothing more.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(agent.ws.recv(), 2.5)
        _, [task_id] = await stack.ann.submit(eid, fid, 1)
        window = decode_gateway_frame(await asyncio.wait_for(agent.ws.recv(), FRAME_WAIT_S))
        assert isinstance(window, Tasks) and [t.task_id for t in window.tasks] == [task_id]


async def test_withdrawn_credit_is_left_to_the_endpoints_other_agents(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        await agent.send(Credit(2))
        await agent.send(Withdraw(5))
        assert await agent.recv(Withdrawn) == Withdrawn(2)  # no more than is outstanding
        await agent.send(Credit(10))
        await agent.send(Withdraw(7))
        assert await agent.recv(Withdrawn) == Withdrawn(7)
        _, task_ids = await stack.ann.submit(eid, fid, 10)
        tasks: list[Task] = []
        while len(tasks) < 3:
            tasks.extend((await agent.recv(Tasks)).tasks)
        # The answer follows every window sent before it, and none can follow: all used.
        await agent.send(Withdraw(1))
        assert await agent.recv(Withdrawn) == Withdrawn(0)
        running = await aredis.xpending(keys.endpoint_tasks(eid), AGENT_GROUP)
        async with AgentClient.connect(url, credential, hello("agent-2")) as other:
            rest = await other.take(7)
    assert [t.task_id for t in tasks] == task_ids[:3]
    assert running["consumers"] == [{"name": "agent-1", "pending": 3}]
    assert sorted(t.task_id for t in rest) == sorted(task_ids[3:])


async def test_outcomes_are_settled_and_answered(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    group, task_ids = await stack.ann.submit(eid, fid, 3)
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        tasks = await agent.take(3)
        answer = await agent.report([success(t, 2 * i) for i, t in enumerate(tasks)])

    assert answer.delivery_ids == tuple(t.delivery_id for t in tasks) and answer.refused == ()
    for i, tid in enumerate(task_ids):
        record = hash_fields(await aredis.hgetall(keys.task(tid)))
        assert (record["state"], deserialize(record["result"])) == ("success", 2 * i)
        assert "notice_pending" not in record
    notices = await aredis.xrange(keys.task_group_results(group))
    assert [n[1]["task_id"] for n in notices] == task_ids
    assert await aredis.xlen(keys.endpoint_tasks(eid)) == 0  # acknowledged and deleted


# -- cancel, drain, status -----------------------------------------------------------------


async def test_a_cancel_is_forwarded_to_the_agent_that_runs_the_task(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    await stack.ann.submit(eid, fid, 2)
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        _, second = await agent.take(2)
        reply = await stack.ann.http.post(f"/v1/tasks/{second.task_id}/cancel")
        assert reply.json()["outcome"] == "interrupt_requested"
        cancel = await agent.recv(Cancel)
    assert cancel.task_ids == (second.task_id,)


async def test_a_hand_back_queues_the_task_again_for_any_agent(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, [task_id] = await stack.ann.submit(eid, fid, 1)
    async with stack.ws() as url:
        async with AgentClient.connect(url, credential, hello("leaving")) as leaving:
            [task] = await leaving.take(1)
            await leaving.send(HandBack((task.ref,)))
            await until(lambda: _state_is(aredis, keys, task_id, "waiting-for-ep"), "handed back")
        async with AgentClient.connect(url, credential, hello("staying")) as staying:
            [again] = await staying.take(1)
    assert again.task_id == task_id and again.attempt == 1  # the attempt was not counted


async def _state_is(aredis: aioredis.Redis, keys: Keys, task_id: str, state: str) -> bool:
    return bool(await aredis.hget(keys.task(task_id), hash_field("state")) == state)


async def test_a_gateway_going_away_asks_its_agents_to_drain(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, [task_id] = await stack.ann.submit(eid, fid, 1)
    server = await stack.server().__aenter__()
    url = f"ws://127.0.0.1:{server.port}"
    async with AgentClient.connect(url, credential) as agent:
        [task] = await agent.take(1)
        closing = asyncio.create_task(server.__aexit__(None, None, None))
        drain = await agent.recv(Drain)
        await agent.send(HandBack((task.ref,)))
        await until(lambda: _state_is(aredis, keys, task_id, "waiting-for-ep"), "handed back")
    await closing
    assert drain.grace_s is None
    assert await aredis.hget(keys.task(task_id), hash_field("attempts")) == "0"


async def test_status_frames_are_recorded_for_the_status_route(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        await agent.send(Status(workers=2, busy=1, queued=3, held=0))

        async def online() -> bool:
            body = (await stack.ann.http.get(f"/v1/endpoints/{eid}/status")).json()
            return bool(body["online"])

        await until(online, "the status was recorded")
        body = (await stack.ann.http.get(f"/v1/endpoints/{eid}/status")).json()
    assert (body["workers"], body["running"], body["agent"]) == (2, 1, "agent-1")
    assert (body["host"], body["engine"], body["capacity"]) == ("node-1", "process", 6)


# -- leases and reconnects -----------------------------------------------------------------

LEASE_MS = 600


async def test_a_lease_is_kept_while_connected_and_lapses_after(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, [task_id] = await stack.ann.submit(eid, fid, 1)
    async with stack.ws(lease_ms=LEASE_MS) as url:
        holding = AgentClient.connect(url, credential, hello("holder"))
        holder = await holding.__aenter__()
        [task] = await holder.take(1)
        async with AgentClient.connect(url, credential, hello("other")) as other:
            await other.send(Credit(1))
            # Three leases pass while the holder is connected: nobody claims its task.
            await asyncio.sleep(3 * LEASE_MS / 1000)
            idle = await aredis.xpending_range(keys.endpoint_tasks(eid), AGENT_GROUP, "-", "+", 10)
            # The holder goes: after its lease the other agent gets the task again.
            await holding.__aexit__(None, None, None)
            again = await other.recv(Tasks)
    assert [(e["consumer"], e["time_since_delivered"] < LEASE_MS) for e in idle] == [
        ("holder", True)
    ]
    assert task.attempt == 1
    [redelivered] = again.tasks
    assert (redelivered.task_id, redelivered.attempt) == (task_id, 2)
    assert redelivered.delivery_id != task.delivery_id
    assert await aredis.hget(keys.task(task_id), hash_field("attempts")) == "2"


async def test_an_agent_that_reconnects_within_the_lease_keeps_its_tasks(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, task_ids = await stack.ann.submit(eid, fid, 2)
    async with stack.ws() as url:
        async with AgentClient.connect(url, credential, hello("steady")) as agent:
            kept, done = await agent.take(2)
        bogus = DeliveryRef("no-such-task", "1-0/1")
        greeting = hello("steady", running=(kept.ref, bogus), held=(done.ref,))
        async with AgentClient.connect(url, credential, greeting) as agent:
            welcome = agent.welcome
            answer = await agent.report([success(kept, 1), success(done, 2)])
    assert welcome.lost == ("no-such-task",)
    assert answer.delivery_ids == (kept.delivery_id, done.delivery_id)
    for tid in task_ids:
        assert await aredis.hget(keys.task(tid), hash_field("state")) == "success"


async def test_another_agent_id_does_not_adopt_the_tasks(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    await stack.ann.submit(eid, fid, 1)
    async with stack.ws() as url:
        async with AgentClient.connect(url, credential, hello("first")) as agent:
            [task] = await agent.take(1)
            async with AgentClient.connect(
                url, credential, hello("impostor", running=(task.ref,))
            ) as impostor:
                assert impostor.welcome.lost == (task.task_id,)
                answer = await impostor.report([success(task)])
    assert [r.code for r in answer.refused] == [NOT_HANDED]


# -- same-process push ---------------------------------------------------------------------


async def test_a_result_settled_here_is_pushed_to_a_subscriber_here_once(stack: Stack) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    group, task_ids = await stack.ann.submit(eid, fid, 3)
    other_group, _ = await stack.ann.submit(eid, fid, 1)
    seen: list[str] = []
    async with (
        stack.ws() as url,
        connect(url + "/v1/results", additional_headers=bearer(stack.ann_token)) as ws,
    ):

        async def frame() -> dict[str, Any]:
            async with asyncio.timeout(FRAME_WAIT_S):
                data: dict[str, Any] = json.loads(await ws.recv())
                return data

        await ws.send(json.dumps({"type": "subscribe", "task_group_id": group, "cursor": "0"}))
        assert (await frame())["type"] == "subscribed"
        async with AgentClient.connect(url, credential) as agent:
            tasks = await agent.take(3)
            for i, task in enumerate(sorted(tasks, key=lambda t: task_ids.index(t.task_id))):
                await agent.report([success(task, i)])
                while task.task_id not in seen:
                    seen += [item["task_id"] for item in (await frame())["results"]]
        # A barrier: what the subscription sent comes before the answer to the next command.
        await ws.send(json.dumps({"type": "unsubscribe", "task_group_id": group}))
        await ws.send(
            json.dumps({"type": "subscribe", "task_group_id": other_group, "cursor": "0"})
        )
        while (reply := await frame())["type"] != "subscribed":
            seen += [item["task_id"] for item in reply["results"]]
    assert seen == task_ids


# -- tasks the gateway settles itself ------------------------------------------------------


async def test_tasks_that_must_not_run_are_settled_and_never_sent(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid, other = await stack.ann.function(), await stack.ann.function(triple)
    _, [cancelled] = await stack.ann.submit(eid, fid, 1)
    _, [refused] = await stack.ann.submit(eid, fid, 1)
    await stack.ann.http.post(f"/v1/tasks/{cancelled}/cancel")
    reply = await stack.ann.http.put(
        f"/v1/endpoints/{eid}/allowed_functions", json={"function_ids": [other]}
    )
    reply.raise_for_status()
    async with stack.ws() as url, AgentClient.connect(url, credential) as agent:
        await agent.send(Credit(5))
        await until(lambda: _state_is(aredis, keys, refused, "failed"), "refused settled")
        await until(lambda: _xlen_is(aredis, keys, eid, 0), "both acknowledged")
        # Nothing was sent before the answer to this question.
        await agent.send(NeedCode((other, "no-such-function")))
        answer = await agent.recv(Functions)
    exception = json.loads(await aredis.hget(keys.task(refused), hash_field("exception")) or "{}")
    assert exception["type"] == "FunctionNotAllowed"
    assert await aredis.hget(keys.task(cancelled), hash_field("state")) == "cancelled"
    assert [c.function_id for c in answer.functions] == [other]
    assert answer.missing == ("no-such-function",)


async def _xlen_is(aredis: aioredis.Redis, keys: Keys, eid: str, length: int) -> bool:
    return bool(await aredis.xlen(keys.endpoint_tasks(eid)) == length)


async def test_a_task_whose_agents_keep_vanishing_fails_with_worker_lost(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, [task_id] = await stack.ann.submit(eid, fid, 1)
    async with stack.ws(lease_ms=300, max_attempts=1) as url:
        async with AgentClient.connect(url, credential, hello("vanishing")) as agent:
            await agent.take(1)
        async with AgentClient.connect(url, credential, hello("next")) as agent:
            await agent.send(Credit(1))
            await until(lambda: _state_is(aredis, keys, task_id, "failed"), "WorkerLost")
    record = hash_fields(await aredis.hgetall(keys.task(task_id)))
    assert json.loads(record["exception"])["type"] == "WorkerLost"
    assert record["attempts"] == "2"


# -- Redis outages -------------------------------------------------------------------------


async def test_the_gateway_rides_out_a_redis_restart(
    database_url: str, private_redis: PrivateRedis
) -> None:
    """Redis goes away with an outcome in flight: the agent hears UNAVAILABLE, the outcome
    is settled once Redis is back, and windows flow again; no connection is closed."""
    await asyncio.to_thread(upgrade, database_url)
    _, token = await create_user(database_url, "ann")
    prefix = unique("fxt")
    keys = Keys(prefix)
    async with (
        web_service(database_url, private_redis.url, prefix) as web_url,
        httpx.AsyncClient(base_url=web_url, headers=bearer(token)) as http,
    ):
        owner = Owner(http)
        eid, credential = await owner.endpoint()
        fid = await owner.function()
        _, [first, second] = await owner.submit(eid, fid, 2)
        settings = WsSettings(
            redis_url=private_redis.url, web_url=web_url, key_prefix=prefix, port=0
        )
        async with (
            ResultServer(settings) as server,
            AgentClient.connect(f"ws://127.0.0.1:{server.port}", credential) as agent,
        ):
            [task] = await agent.take(1)
            await asyncio.to_thread(private_redis.stop)
            await agent.send(Outcomes((success(task, 7),)))
            error = await agent.recv(Error)
            await asyncio.to_thread(private_redis.start)
            answer = await agent.recv(Settled)
            [again] = await agent.take(1)
        async with aioredis.Redis.from_url(private_redis.url, decode_responses=True) as check:
            state = await check.hget(keys.task(first), hash_field("state"))
    assert error.code == UNAVAILABLE
    assert answer.delivery_ids == (task.delivery_id,)
    assert (task.task_id, again.task_id, state) == (first, second, "success")


# -- several copies ------------------------------------------------------------------------


async def test_agents_on_two_copies_share_the_work_and_may_move_between_them(
    stack: Stack, aredis: aioredis.Redis, keys: Keys
) -> None:
    eid, credential = await stack.ann.endpoint()
    fid = await stack.ann.function()
    _, task_ids = await stack.ann.submit(eid, fid, 4)
    async with stack.ws() as url_a, stack.ws() as url_b:
        async with (
            AgentClient.connect(url_a, credential, hello("on-a")) as on_a,
            AgentClient.connect(url_b, credential, hello("on-b")) as on_b,
        ):
            got_a = await on_a.take(2)
            got_b = await on_b.take(2)
        # on-a's connection dropped; it comes back through copy B within the lease.
        greeting = hello("on-a", running=tuple(t.ref for t in got_a))
        async with AgentClient.connect(url_b, credential, greeting) as moved:
            answer = await moved.report([success(t) for t in got_a])
    assert sorted(t.task_id for t in got_a + got_b) == sorted(task_ids)
    assert moved.welcome.lost == ()
    assert answer.delivery_ids == tuple(t.delivery_id for t in got_a)
    for task in got_a:
        assert await aredis.hget(keys.task(task.task_id), hash_field("state")) == "success"
