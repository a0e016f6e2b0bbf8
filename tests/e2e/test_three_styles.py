"""Each client style runs 1,000 tasks end to end with correct results; failures and pending
tasks surface as TaskFailed and TaskPending."""

from __future__ import annotations

import asyncio
import time

import pytest

from fxbroker import AsyncClient, Client, Executor, TaskFailed, TaskPending
from fxbroker.workload import async_double, fail, square
from tests.e2e.conftest import Platform

N = 1000


def test_client_polling_runs_1000_tasks(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(square)
        batch = client.create_batch()
        for x in range(N):
            batch.add(fid, args=(x,))
        task_ids = client.batch_run(platform.endpoint_id, batch)
        assert len(task_ids) == N and len(set(task_ids)) == N
        results: dict[str, object] = {}
        deadline = time.monotonic() + 120
        while len(results) < N and time.monotonic() < deadline:
            pending = [t for t in task_ids if t not in results]
            for task_id, status in client.get_batch_result(pending[:1000]).items():
                assert "exception" not in status, status
                if not status["pending"]:
                    results[task_id] = status["result"]
            if len(results) < N:
                time.sleep(0.1)
        assert [results.get(t) for t in task_ids] == [x * x for x in range(N)]
        single = client.run(12, endpoint_id=platform.endpoint_id, function_id=fid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                assert client.get_result(single) == 144
                break
            except TaskPending:
                time.sleep(0.05)
        else:
            pytest.fail("a single task did not finish in 60 s")


def test_async_client_runs_1000_tasks(platform: Platform) -> None:
    async def main() -> tuple[list[int], int]:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            fid = await ac.register_function(square)
            values = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        ac.run(x, endpoint_id=platform.endpoint_id, function_id=fid)
                        for x in range(N)
                    )
                ),
                120,
            )
            aid = await ac.register_function(async_double)
            doubled = await ac.run(21, endpoint_id=platform.endpoint_id, function_id=aid)
        return list(values), doubled

    values, doubled = asyncio.run(main())
    assert values == [x * x for x in range(N)]
    assert doubled == 42


def test_executor_runs_1000_tasks(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        with Executor(endpoint_id=platform.endpoint_id, client=client) as ex:
            assert list(ex.map(square, range(N), timeout=120)) == [x * x for x in range(N)]


def _assert_remote_failure(exc: TaskFailed) -> None:
    assert isinstance(exc, ValueError)  # the remote type, re-raised as its own type too
    assert str(exc) == "cannot handle 7"
    assert exc.type_name == "ValueError"
    assert "cannot handle 7" in exc.message
    assert "in fail" in exc.remote_traceback
    assert "ValueError: cannot handle 7" in exc.remote_traceback


def test_failures_come_back_as_task_failed_in_all_three_styles(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(fail)
        task_id = client.run(7, endpoint_id=platform.endpoint_id, function_id=fid)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get_result(task_id)
                pytest.fail("get_result of a failed task returned")
            except TaskPending:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            except TaskFailed as exc:
                _assert_remote_failure(exc)
                break

        with Executor(endpoint_id=platform.endpoint_id, client=client) as ex:
            with pytest.raises(TaskFailed) as info:
                ex.submit(fail, 7).result(timeout=60)
            _assert_remote_failure(info.value)

    async def main() -> None:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            with pytest.raises(TaskFailed) as info:
                await asyncio.wait_for(
                    ac.run(7, endpoint_id=platform.endpoint_id, function_id=fid), 60
                )
            _assert_remote_failure(info.value)

    asyncio.run(main())


def test_queued_task_raises_task_pending(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        idle = client.register_endpoint("no-agent-here")
        fid = client.register_function(square)
        task_id = client.run(3, endpoint_id=idle, function_id=fid)
        with pytest.raises(TaskPending) as info:
            client.get_result(task_id)
        assert info.value.state == "waiting-for-ep"
        assert client.get_task(task_id)["state"] == "waiting-for-ep"
