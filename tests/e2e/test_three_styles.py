"""Each client style runs 1,000 tasks end to end with correct results; failures and pending
tasks surface as TaskFailed and TaskPending."""

from __future__ import annotations

import asyncio

import pytest

from fxbroker import AsyncClient, Client, Executor, RemoteFunction, TaskFailed, TaskPending
from fxbroker.workload import async_double, fail, square
from tests.e2e.conftest import Platform
from tests.sdk.workload import nap

N = 1000


def test_client_polling_runs_1000_tasks(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(square)
        batch = client.create_batch()
        for x in range(N):
            batch.add(fid, args=(x,))
        task_ids = client.batch_run(platform.endpoint_id, batch)
        platform.agent.sample()  # besides the watch's own samples: one while tasks run
        assert len(task_ids) == N and len(set(task_ids)) == N
        results = client.wait(task_ids, timeout_s=120, poll_s=0.1)
        assert list(results) == task_ids
        assert all("exception" not in status for status in results.values())
        assert [results[t]["result"] for t in task_ids] == [x * x for x in range(N)]
        single = client.run(12, endpoint_id=platform.endpoint_id, function_id=fid)
        client.wait([single], timeout_s=60, poll_s=0.05)
        assert client.get_result(single) == 144


def test_async_client_runs_1000_tasks(platform: Platform) -> None:
    async def main() -> tuple[list[int], int]:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            fid = await ac.register_function(square)
            running = asyncio.gather(
                *(ac.run(x, endpoint_id=platform.endpoint_id, function_id=fid) for x in range(N))
            )
            await asyncio.sleep(0)  # the runs start submitting
            platform.agent.sample()
            values = await asyncio.wait_for(running, 120)
            aid = await ac.register_function(async_double)
            doubled = await ac.run(21, endpoint_id=platform.endpoint_id, function_id=aid)
        return list(values), doubled

    values, doubled = asyncio.run(main())
    assert values == [x * x for x in range(N)]
    assert doubled == 42


def test_executor_runs_1000_tasks(platform: Platform) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        with Executor(endpoint_id=platform.endpoint_id, client=client) as ex:
            results = ex.map(square, range(N), timeout=120)  # submitted now
            platform.agent.sample()
            assert list(results) == [x * x for x in range(N)]


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
        [status] = client.wait([task_id], timeout_s=60, poll_s=0.05).values()
        assert isinstance(status["exception"], TaskFailed)
        with pytest.raises(TaskFailed) as failed:
            client.get_result(task_id)
        _assert_remote_failure(failed.value)

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


WALLTIME_S = 0.5
"""The walltime of the task that sleeps 5 s; the one beside it without one sleeps longer."""


def _assert_walltime_exceeded(exc: BaseException) -> None:
    assert isinstance(exc, TaskFailed), repr(exc)
    assert exc.type_name == "WalltimeExceeded"
    assert f"walltime of {WALLTIME_S:g} s" in exc.message


def test_a_tasks_own_walltime_stops_it_in_every_style(platform: Platform) -> None:
    """A task given 0.5 s that sleeps 5 s fails with WalltimeExceeded; one beside it without
    a walltime sleeps 1 s (longer than 0.5 s) and succeeds: the limit is the task's own."""
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(nap)
        batch = client.create_batch()
        batch.add(fid, args=(5,), walltime_s=WALLTIME_S)
        batch.add(fid, args=(1.0,))
        capped, free = client.batch_run(platform.endpoint_id, batch)
        results = client.wait([capped, free], timeout_s=60, poll_s=0.05)
        _assert_walltime_exceeded(results[capped]["exception"])
        assert results[free]["result"] == 1.0

        with Executor(platform.endpoint_id, client=client, walltime_s=WALLTIME_S) as capped_ex:
            with Executor(platform.endpoint_id, client=client) as free_ex:
                capped_future = capped_ex.submit(nap, 5)
                free_future = free_ex.submit(nap, 1.0)
                assert free_future.result(timeout=60) == 1.0
            _assert_walltime_exceeded(capped_future.exception(timeout=60))

        rcapped = RemoteFunction(
            nap, client=client, endpoint_id=platform.endpoint_id, walltime_s=WALLTIME_S
        )
        rfree = RemoteFunction(nap, client=client, endpoint_id=platform.endpoint_id)
        capped_call, free_call = rcapped.submit(5), rfree.submit(1.0)
        assert free_call.result(timeout=60) == 1.0
        _assert_walltime_exceeded(capped_call.exception(timeout=60))

    async def pushed() -> tuple[BaseException | None, float]:
        async with AsyncClient(url=platform.url, token=platform.token) as ac:
            aid = await ac.register_function(nap)
            capped_handle = ac.submit_task(
                aid, (5,), endpoint_id=platform.endpoint_id, walltime_s=WALLTIME_S
            )
            free_value = await asyncio.wait_for(
                ac.run_task(aid, (1.0,), endpoint_id=platform.endpoint_id), 60
            )
            await asyncio.wait({capped_handle.future}, timeout=60)
            return capped_handle.exception(), free_value

    error, value = asyncio.run(pushed())
    assert value == 1.0
    assert error is not None
    _assert_walltime_exceeded(error)


def test_the_agent_and_its_workers_never_connected_to_redis(platform: Platform) -> None:
    """From the operating system's view, sampled every 20 ms while the tests above ran: the
    agent process and its worker processes held connections to ws (the gateway) and never
    one to a Redis port (any node's, on a cluster); the agent was started with no Redis URL
    at all."""
    watch = platform.agent
    watch.sample()
    assert len(watch.processes) >= 3, watch.processes  # the agent and its 2 workers at least
    assert watch.ports[platform.ws_port] > 0, watch.ports
    assert all(watch.ports[port] == 0 for port in platform.redis_ports), watch.ports
