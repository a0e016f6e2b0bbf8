"""Exceptions feel local in every style, remote-function handles, AsyncClient handles, calls from
inside a running event loop, cancel, stdout/stderr and progress, against the real platform."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fxbroker import (
    AsyncClient,
    Client,
    Executor,
    RemoteFunction,
    TaskFailed,
    TaskFuture,
    TaskPending,
)
from sdk.messages import stored_fields
from sdk.serialize import serialize
from tests.sdk.stack import Runner, Services, Stack, threaded
from tests.sdk.workload import async_add, fail, scale, square

TIMEOUT_S = 60


@pytest.fixture
def platform(
    database_url: str, redis_url: str, key_prefix: str
) -> Iterator[tuple[Services, Stack, Runner]]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack) as (services, runner):
        yield services, stack, runner


@pytest.fixture
def client(platform: tuple[Services, Stack, Runner]) -> Iterator[Client]:
    s = platform[0]
    with Client(s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id) as client:
        yield client


def assert_remote_value_error(exc: BaseException, message: str) -> None:
    assert isinstance(exc, ValueError) and isinstance(exc, TaskFailed) and str(exc) == message
    remote: Any = exc
    assert "raise ValueError(message)" in remote.remote_traceback
    assert remote.task_id
    assert any("Remote traceback of task" in note for note in exc.__notes__)


def test_a_remote_value_error_is_caught_as_value_error_in_every_style(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    fid = client.register_function(fail)

    task_id = client.run("polled", function_id=fid)
    client.wait([task_id])
    with pytest.raises(ValueError) as polled:
        client.get_result(task_id)
    assert_remote_value_error(polled.value, "polled")

    async def pushed() -> None:
        async with AsyncClient(s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id) as ac:
            with pytest.raises(ValueError) as ran:
                await asyncio.wait_for(ac.run("awaited", function_id=fid), TIMEOUT_S)
            assert_remote_value_error(ran.value, "awaited")
            handle = ac.submit("handled", function_id=fid)
            with pytest.raises(ValueError) as handled:
                await asyncio.wait_for(handle, TIMEOUT_S)
            assert_remote_value_error(handled.value, "handled")

    asyncio.run(pushed())

    with Executor(s.endpoint_id, client=client) as ex:
        with pytest.raises(ValueError) as future:
            ex.submit(fail, "executed").result(TIMEOUT_S)
        assert_remote_value_error(future.value, "executed")

    rfail = RemoteFunction(fail, client=client)
    with pytest.raises(ValueError) as called:
        rfail("called")
    assert_remote_value_error(called.value, "called")

    async def awaited() -> None:
        with pytest.raises(ValueError) as caught:
            await rfail("awaited", async_=True)
        assert_remote_value_error(caught.value, "awaited")

    asyncio.run(awaited())


def test_remote_function_handles(client: Client) -> None:
    rsquare = RemoteFunction(square, client=client)
    assert rsquare(7) == 49
    future = rsquare.submit(8)
    assert isinstance(future, concurrent.futures.Future) and isinstance(future, TaskFuture)
    assert future.result(TIMEOUT_S) == 64 and future.task_id
    assert list(rsquare.map(range(20), progress=False)) == [i * i for i in range(20)]
    again = RemoteFunction(square, client=client)
    assert again.function_id == rsquare.function_id  # one registration
    rscale = RemoteFunction(scale, client=client)
    assert rscale(3, by=4) == 12
    assert rscale.executor is rsquare.executor  # one Executor per client and endpoint
    assert RemoteFunction(async_add, client=client)(40, b=2) == 42

    async def awaiting() -> list[int]:
        first = await rsquare(3, async_=True)
        rsquare.async_ = True
        try:
            rest = await asyncio.gather(*(rsquare(i) for i in range(4, 7)))
        finally:
            rsquare.async_ = False
        return [first, *rest]

    assert asyncio.run(awaiting()) == [9, 16, 25, 36]


def test_closing_the_client_shuts_its_handles_executor_down(
    platform: tuple[Services, Stack, Runner],
) -> None:
    s = platform[0]
    with Client(s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id) as other:
        rsquare = RemoteFunction(square, client=other)
        assert rsquare(4) == 16
        executor = rsquare.executor
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 5)


def test_two_handles_of_the_same_code_share_one_registered_function(client: Client) -> None:
    namespace: dict[str, Any] = {}
    source = "def cube(x):\n    return x ** 3\n"
    exec(source, namespace)  # a notebook cell ...
    one = RemoteFunction(namespace["cube"], client=client)
    exec(source, namespace)  # ... run again: a new function object with the same code
    two = RemoteFunction(namespace["cube"], client=client)
    assert one.fn is not two.fn
    assert one.function_id == two.function_id
    assert one(2) == two(2) == 8


def test_sync_calls_from_inside_a_running_event_loop(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    """As in a Jupyter cell: the calling thread runs a loop; blocking calls must still work."""
    s = platform[0]
    rsquare = RemoteFunction(square, client=client)

    async def cell() -> tuple[int, int, int, int]:
        called = rsquare(5)
        fid = client.register_function(square)
        task_id = client.run(6, function_id=fid)
        client.wait([task_id])
        polled = client.get_result(task_id)
        with Executor(s.endpoint_id, client=client) as ex:
            executed = ex.submit(square, 7).result(TIMEOUT_S)
        async with AsyncClient(s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id) as ac:
            awaited = await ac.run(8, function_id=fid)
        return called, polled, executed, awaited

    assert asyncio.run(cell()) == (25, 36, 49, 64)


def test_async_client_submit_and_as_completed(platform: tuple[Services, Stack, Runner]) -> None:
    s = platform[0]

    async def main() -> None:
        async with AsyncClient(s.url, s.token, ws_url=s.ws_url, endpoint_id=s.endpoint_id) as ac:
            fid = await ac.register_function(square)
            handles = [ac.submit(i, function_id=fid) for i in range(30)]
            assert all(h.task_id is None for h in handles)  # not sent yet
            seen = [h async for h in ac.as_completed(handles, timeout_s=TIMEOUT_S)]
            assert sorted(h.result() for h in seen) == [i * i for i in range(30)]
            assert {h.task_id for h in seen} == {h.task_id for h in handles}
            assert all(h.task_id for h in handles)
            assert await handles[3] == 9
            assert ac.submit_requests < 30

    asyncio.run(main())


def test_cancel_returns_true_only_if_the_task_will_not_run(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    with Executor(s.idle_endpoint_id, client=client) as idle:
        queued = idle.submit(square, 2)
        idle.flush()
        assert queued.task_id is not None
        assert queued.cancel() is True and queued.cancelled()
        assert client.get_task(queued.task_id)["state"] == "cancelled"
        assert queued.cancel() is True  # as for any future: already cancelled

        other = idle.submit(square, 3)
        idle.flush()
        assert other.task_id is not None
        assert client.cancel(other.task_id) is True  # cancelled by someone else, upstream
        concurrent.futures.wait([other], TIMEOUT_S)
        assert other.cancelled()  # the pushed notice cancelled the future

    with Executor(s.endpoint_id, client=client) as ex:
        done = ex.submit(square, 4)
        assert done.result(TIMEOUT_S) == 16
        assert done.cancel() is False
    with pytest.raises(TaskFailed, match="cancelled"):
        client.get_result(queued.task_id)


def test_shutdown_with_cancel_futures_cancels_upstream_and_never_hangs(client: Client) -> None:
    s_idle = client.register_endpoint("nobody-serves-this")
    ex = Executor(s_idle, client=client)
    futures = [ex.submit(square, i) for i in range(5)]
    ex.flush()
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    infos = client.get_tasks([f.task_id or "" for f in futures])
    assert {info["state"] for info in infos.values()} == {"cancelled"}


def test_stdout_and_stderr_reach_the_result(
    platform: tuple[Services, Stack, Runner], client: Client, redis_url: str
) -> None:
    """The agent writes ``stdout``/``stderr`` into the task hash; here the test writes them the
    way the agent does, so the SDK side is checked on its own."""
    s = platform[0]
    with Executor(s.idle_endpoint_id, client=client) as ex:
        future = ex.submit(square, 9)
        ex.flush()
        task_id = future.task_id
        assert task_id is not None and future.stdout == ""
        group = ex.task_group_id
        assert group is not None
        with redis.Redis.from_url(redis_url) as r:
            r.hset(
                s.keys.task(task_id),
                mapping=stored_fields({"state": "success", "completed_at": f"{time.time():.6f}",
                         "result": serialize(81), "stdout": "hello\n", "stderr": "careful\n"}),
            )  # fmt: skip
            r.xadd(s.keys.task_group_results(group), {"task_id": task_id, "state": "success"})
        assert future.result(TIMEOUT_S) == 81
        assert (future.stdout, future.stderr) == ("hello\n", "careful\n")
    info = client.get_task(task_id)
    assert (info.get("stdout"), info.get("stderr")) == ("hello\n", "careful\n")
    entry = client.get_batch_result([task_id])[task_id]
    assert (entry["stdout"], entry["stderr"]) == ("hello\n", "careful\n")


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (the progress bar's own seam: ``isatty``)."""

    def isatty(self) -> bool:
        return True


def test_wait_draws_progress_only_on_a_terminal(
    platform: tuple[Services, Stack, Runner], client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid = client.register_function(square)
    batch = client.create_batch()
    for i in range(10):
        batch.add(fid, args=(i,))
    task_ids = client.batch_run(None, batch)

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    done = client.wait(task_ids, progress=True, poll_s=0.05, timeout_s=TIMEOUT_S)
    assert [done[t]["result"] for t in task_ids] == [i * i for i in range(10)]
    assert terminal.getvalue().rstrip("\n").split("\r")[-1].startswith("fxbroker 10/10 [")

    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    client.wait(task_ids, progress=True)
    with Executor(client=client) as ex:
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
    assert piped.getvalue() == ""


def test_wait_times_out_on_tasks_that_never_run(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    fid = client.register_function(square)
    task_id = client.run(1, endpoint_id=s.idle_endpoint_id, function_id=fid)
    with pytest.raises(TimeoutError):
        client.wait([task_id], timeout_s=0.0)
    with pytest.raises(TaskPending):
        client.get_result(task_id)
