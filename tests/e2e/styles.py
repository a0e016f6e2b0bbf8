"""The three client styles run against a platform of processes: ``n`` tasks through each with
their results right and in order, and a raising task in each that comes back as
:class:`~fxbroker.TaskFailed` with the remote traceback.

:mod:`tests.e2e.test_three_styles` runs them on the agent's process engine and
:mod:`tests.e2e.test_engines_three_styles` on the ``rq`` and ``parsl`` engines, so every
engine is held to the same checks."""

from __future__ import annotations

import asyncio

import pytest

from fxbroker import AsyncClient, Client, Executor, TaskFailed
from fxbroker.workload import async_double, fail, square
from tests.e2e.conftest import Platform

WAIT_S = 120.0
"""How long one style waits for its ``n`` results."""


def assert_polling_runs(platform: Platform, n: int) -> None:
    """``Client``: one batch of ``n`` squares, polled with ``wait`` (``get_batch_result``
    underneath), then one more task read back with ``get_result``."""
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(square)
        batch = client.create_batch()
        for x in range(n):
            batch.add(fid, args=(x,))
        task_ids = client.batch_run(platform.endpoint_id, batch)
        platform.agent.sample()  # besides the watch's own samples: one while tasks run
        assert len(task_ids) == n and len(set(task_ids)) == n
        results = client.wait(task_ids, timeout_s=WAIT_S, poll_s=0.1)
        assert list(results) == task_ids
        assert all("exception" not in status for status in results.values())
        assert [results[t]["result"] for t in task_ids] == [x * x for x in range(n)]
        single = client.run(12, endpoint_id=platform.endpoint_id, function_id=fid)
        client.wait([single], timeout_s=60, poll_s=0.05)
        assert client.get_result(single) == 144


def assert_async_runs(platform: Platform, n: int) -> None:
    """``AsyncClient``: ``n`` squares awaited together, their results pushed over the
    WebSocket, then one ``async def`` task (which runs in the agent's event loop)."""

    async def main() -> tuple[list[int], int]:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            fid = await ac.register_function(square)
            running = asyncio.gather(
                *(ac.run(x, endpoint_id=platform.endpoint_id, function_id=fid) for x in range(n))
            )
            await asyncio.sleep(0)  # the runs start submitting
            platform.agent.sample()
            values = await asyncio.wait_for(running, WAIT_S)
            aid = await ac.register_function(async_double)
            doubled = await ac.run(21, endpoint_id=platform.endpoint_id, function_id=aid)
        return list(values), doubled

    values, doubled = asyncio.run(main())
    assert values == [x * x for x in range(n)]
    assert doubled == 42


def assert_executor_runs(platform: Platform, n: int) -> None:
    """``Executor``: ``map`` of ``n`` squares, read back in order."""
    with Client(url=platform.url, token=platform.token) as client:
        with Executor(endpoint_id=platform.endpoint_id, client=client) as ex:
            results = ex.map(square, range(n), timeout=WAIT_S)  # submitted now
            platform.agent.sample()
            assert list(results) == [x * x for x in range(n)]


def assert_failures_in_every_style(platform: Platform) -> None:
    """``fail(7)`` through ``Client`` (``wait`` and ``get_result``), the ``Executor`` and the
    ``AsyncClient``: each time :class:`~fxbroker.TaskFailed` with the remote traceback."""
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(fail)
        task_id = client.run(7, endpoint_id=platform.endpoint_id, function_id=fid)
        [status] = client.wait([task_id], timeout_s=60, poll_s=0.05).values()
        assert isinstance(status["exception"], TaskFailed)
        with pytest.raises(TaskFailed) as failed:
            client.get_result(task_id)
        assert_remote_failure(failed.value)

        with Executor(endpoint_id=platform.endpoint_id, client=client) as ex:
            with pytest.raises(TaskFailed) as info:
                ex.submit(fail, 7).result(timeout=60)
            assert_remote_failure(info.value)

    async def main() -> None:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            with pytest.raises(TaskFailed) as info:
                await asyncio.wait_for(
                    ac.run(7, endpoint_id=platform.endpoint_id, function_id=fid), 60
                )
            assert_remote_failure(info.value)

    asyncio.run(main())


def assert_remote_failure(exc: TaskFailed) -> None:
    """``exc`` is the ``ValueError`` that ``fail(7)`` raised on the endpoint."""
    assert isinstance(exc, ValueError)  # the remote type, re-raised as its own type too
    assert str(exc) == "cannot handle 7"
    assert exc.type_name == "ValueError"
    assert "cannot handle 7" in exc.message
    assert "in fail" in exc.remote_traceback
    assert "ValueError: cannot handle 7" in exc.remote_traceback
