"""AsyncClient and ResultListener against the real web service, ws service, agent and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from fxbroker import APIError, AsyncClient, TaskPending
from sdk._base import TaskOutcome
from sdk.results import ResultListener
from tests.conftest import free_port
from tests.sdk.stack import Services, Stack
from tests.sdk.workload import async_add, fail, scale, square


@pytest.fixture
async def stack(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Stack]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    async with stack:
        yield stack


def services(stack: Stack) -> Services:
    assert stack.services is not None
    return stack.services


def client(s: Services, endpoint_id: str | None = None) -> AsyncClient:
    return AsyncClient(s.url, s.token, ws_url=s.ws_url, endpoint_id=endpoint_id or s.endpoint_id)


class Recorder:
    """Counts each resolution per task id, and tells when all expected ones arrived."""

    def __init__(self, expected: int) -> None:
        self.calls: dict[str, list[tuple[Any, BaseException | None]]] = {}
        self.expected = expected
        self.done = asyncio.Event()

    def resolver(self, task_id: str) -> Any:
        def resolve(outcome: TaskOutcome) -> None:
            assert outcome.task_id == task_id
            self.calls.setdefault(task_id, []).append((outcome.value, outcome.error))
            if len(self.calls) == self.expected:
                self.done.set()

        return resolve


async def test_gathered_runs_return_results(stack: Stack) -> None:
    s = services(stack)
    await stack.serve(s.endpoint_id)
    async with client(s) as ac:
        fid = await ac.register_function(square)
        assert await ac.register_function(square) == fid
        values = await asyncio.gather(*(ac.run(i, function_id=fid) for i in range(60)))
        assert values == [i * i for i in range(60)]
        sid = await ac.register_function(scale)
        assert await ac.run(7, function_id=sid, by=3) == 21
        aid = await ac.register_function(async_add)
        assert await ac.run(40, 2, endpoint_id=s.endpoint_id, function_id=aid) == 42
        assert ac.task_group_id is not None
        group = await ac.get_task_group(ac.task_group_id)
        assert len(group["task_ids"]) == 62
        assert ac.results.connected  # lingers once nothing is outstanding, for the next run
    assert not ac.results.connected  # closed with the client


async def test_sequential_runs_share_one_websocket_without_compression(stack: Stack) -> None:
    s = services(stack)
    await stack.serve(s.endpoint_id)
    async with client(s) as ac:
        fid = await ac.register_function(square)
        for i in range(50):
            assert await ac.run(i, function_id=fid) == i * i
        ws = ac.results.connection
        assert ws is not None  # lingering: nothing is outstanding, the socket stays
        assert "Sec-WebSocket-Extensions" not in ws.request.headers
        assert ws.protocol.extensions == []
        assert (ac.results.connections, ac.results.subscriptions) == (1, 1)
    assert stack.ws_server.results_connections == 1


async def test_the_websocket_closes_after_the_linger_and_reopens_from_the_cursor(
    stack: Stack,
) -> None:
    s = services(stack)
    await stack.serve(s.endpoint_id)
    async with AsyncClient(
        s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id, ws_linger_s=0.05
    ) as ac:
        fid = await ac.register_function(square)
        assert await ac.run(3, function_id=fid) == 9
        async with asyncio.timeout(10):
            await ac.results.wait_closed()
        assert ac.results.connection is None
        assert await ac.run(4, function_id=fid) == 16
        assert ac.results.connections == 2
    assert stack.ws_server.results_connections == 2


async def test_failed_run_raises_the_remote_exception_with_its_traceback(stack: Stack) -> None:
    s = services(stack)
    await stack.serve(s.endpoint_id)
    async with client(s) as ac:
        fid = await ac.register_function(fail)
        ok = await ac.register_function(square)
        outcomes = await asyncio.gather(
            ac.run("no such thing", function_id=fid), ac.run(3, function_id=ok),
            return_exceptions=True,
        )  # fmt: skip
    failed, value = outcomes
    assert value == 9
    assert isinstance(failed, ValueError) and failed.args == ("no such thing",)
    remote_traceback = failed.remote_traceback  # type: ignore[attr-defined]
    assert "raise ValueError(message)" in remote_traceback
    assert "workload.py" in remote_traceback
    assert any("raise ValueError(message)" in note for note in failed.__notes__)


async def test_get_result_of_a_queued_task_is_pending(stack: Stack) -> None:
    s = services(stack)
    async with client(s, s.idle_endpoint_id) as ac:
        fid = await ac.register_function(square)
        batch = ac.create_batch()
        batch.add(fid, args=(5,))
        [task_id] = await ac.batch_run(None, batch)
        with pytest.raises(TaskPending) as caught:
            await ac.get_result(task_id)
        assert caught.value.state == "waiting-for-ep"
        statuses = (await ac.get_endpoint_statuses())["endpoints"]
        idle = next(view for view in statuses if view["endpoint_id"] == s.idle_endpoint_id)
        assert (idle["online"], idle["queued"], idle["finished"]) == (False, 1, 0)
        await stack.burst(s.idle_endpoint_id)
        assert await ac.get_result(task_id) == 25
        assert (await ac.get_batch_result([task_id]))[task_id]["result"] == 25


async def test_listener_drops_duplicates_and_resubscribes_after_a_restart(
    stack: Stack, aredis: aioredis.Redis
) -> None:
    s = services(stack)
    async with client(s) as ac:
        fid = await ac.register_function(square)
        batch = ac.create_batch()
        for i in (2, 3):
            batch.add(fid, args=(i,))
        first, second = await ac.batch_run(s.endpoint_id, batch)
        later = await ac.batch_run(s.idle_endpoint_id, _one(ac, fid, 4))
        await stack.burst(s.endpoint_id)
        group = ac.task_group_id
        assert group is not None
        # The ws service may push a notice twice; here every one of them is in the stream twice.
        stream = s.keys.task_group_results(group)
        entries: list[tuple[str, dict[str, str]]] = await aredis.xrange(stream)  # type: ignore[assignment]
        for _, fields in entries:
            await aredis.xadd(stream, fields)  # type: ignore[arg-type]

        listener = ResultListener(ws_url=ac.get_ws_url, token=s.token, task_group_id=group)
        early = Recorder(2)
        listener.watch(first, early.resolver(first))
        listener.watch(second, early.resolver(second))
        late = Recorder(1)
        listener.watch(later[0], late.resolver(later[0]))
        await asyncio.wait_for(early.done.wait(), 30)
        assert early.calls == {first: [(4, None)], second: [(9, None)]}
        assert listener.connected  # the later task keeps it open

        await stack.restart_ws()  # the connection drops; the listener must come back
        await stack.burst(s.idle_endpoint_id)
        await asyncio.wait_for(late.done.wait(), 30)
        assert late.calls == {later[0]: [(16, None)]}
        assert early.calls == {first: [(4, None)], second: [(9, None)]}
        await listener.aclose()


async def test_pushed_results_come_from_the_next_ws_copy_when_one_is_down(stack: Stack) -> None:
    """Given two ws copies, the first one refusing connections (nothing listens there), the
    client's results come from the second."""
    s = services(stack)
    await stack.serve(s.endpoint_id)
    down = f"ws://127.0.0.1:{free_port()}"
    async with AsyncClient(s.url, s.token, ws_url=f"{down},{s.ws_url}") as ac:
        fid = await ac.register_function(square)
        values = await asyncio.wait_for(
            asyncio.gather(
                *(ac.run(i, endpoint_id=s.endpoint_id, function_id=fid) for i in range(5))
            ),
            30,
        )
        assert values == [i * i for i in range(5)]
        assert ac.results.connections == 1  # the copy that is down was never connected


def _one(ac: AsyncClient, fid: str, x: int) -> Any:
    batch = ac.create_batch()
    batch.add(fid, args=(x,))
    return batch


async def test_a_group_that_is_not_yours_fails_the_watched_tasks(stack: Stack) -> None:
    s = services(stack)
    async with client(s) as ac:
        listener = ResultListener(ws_url=ac.get_ws_url, token=s.token, task_group_id="not-mine")
        seen = Recorder(1)
        listener.watch("t1", seen.resolver("t1"))
        await asyncio.wait_for(seen.done.wait(), 30)
        [(_, error)] = seen.calls["t1"]
        assert isinstance(error, APIError) and error.status == 404
        await listener.aclose()


async def test_a_bad_token_fails_the_watched_tasks(stack: Stack) -> None:
    s = services(stack)
    async with client(s) as ac:
        listener = ResultListener(ws_url=ac.get_ws_url, token="wrong", task_group_id="g")
        seen = Recorder(1)
        listener.watch("t1", seen.resolver("t1"))
        await asyncio.wait_for(seen.done.wait(), 30)
        [(_, error)] = seen.calls["t1"]
        assert isinstance(error, APIError) and error.status == 401
        await listener.aclose()


async def test_api_errors_and_ws_url_discovery(stack: Stack) -> None:
    s = services(stack)
    async with AsyncClient(s.url, s.token) as ac:
        assert await ac.get_ws_url() == s.ws_url  # from GET /v1/info
        with pytest.raises(APIError) as caught:
            await ac.get_task("00000000-0000-0000-0000-000000000000")
        assert caught.value.status == 404 and caught.value.code == "TASK_NOT_FOUND"
        with pytest.raises(APIError) as caught:
            await ac.run(1, endpoint_id=s.endpoint_id, function_id="no-such-function")
        assert caught.value.status == 404


async def test_many_ids_go_in_requests_of_at_most_a_thousand(stack: Stack) -> None:
    """1,001 ids: one request of 1,000 and one of 1 (one request of all of them gets a 422)."""
    s = services(stack)
    async with client(s, s.idle_endpoint_id) as ac:
        fid = await ac.register_function(square)
        batch = ac.create_batch()
        for i in range(1001):
            batch.add(fid, args=(i,))
        task_ids = await ac.batch_run(None, batch)
        assert len(task_ids) == 1001
        results = await ac.get_batch_result(task_ids)
        assert list(results) == task_ids
        assert all(
            entry == {"pending": True, "status": "waiting-for-ep"} for entry in results.values()
        )
        infos = await ac.get_tasks(task_ids)
        assert list(infos) == task_ids and {i["state"] for i in infos.values()} == {
            "waiting-for-ep"
        }
        outcomes = await ac.cancel_tasks(task_ids)
        assert outcomes == dict.fromkeys(task_ids, "cancelled")
        done = await ac.wait(task_ids, timeout_s=30)
        assert list(done) == task_ids
        assert {entry["status"] for entry in done.values()} == {"cancelled"}


async def test_a_netrc_entry_for_the_service_does_not_break_requests(
    stack: Stack, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token is the client's only credential: a ``.netrc`` naming the service's host (an
    HTTP client that trusts the environment would add it and refuse the request) is not read."""
    s = services(stack)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with client(s) as ac:
        assert await ac.register_function(square)


async def test_requests_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0].decode())
        body = b'{"code": "TASK_NOT_FOUND", "message": "no such task"}'
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    task_id = "00000000-0000-4000-8000-000000000000"
    try:
        async with AsyncClient("http://service.invalid:8000", "fxb_token", retry_for_s=0) as ac:
            with pytest.raises(APIError):
                await ac.get_task(task_id)
            monkeypatch.setenv("NO_PROXY", "service.invalid")  # read once, when the client opened
            with pytest.raises(APIError):
                await ac.get_task(task_id)
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [f"GET http://service.invalid:8000/v1/tasks/{task_id} HTTP/1.1"] * 2
