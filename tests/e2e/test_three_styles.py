"""Each client style runs 1,000 tasks end to end with correct results on the agent's process
engine (the checks of :mod:`tests.e2e.styles`, which the rq and parsl engines pass too);
failures and pending tasks surface as TaskFailed and TaskPending."""

from __future__ import annotations

import asyncio

import pytest

from fxbroker import AsyncClient, Client, Executor, RemoteFunction, TaskFailed, TaskPending
from fxbroker.workload import square
from tests.e2e.conftest import Platform
from tests.e2e.styles import (
    assert_async_runs,
    assert_executor_runs,
    assert_failures_in_every_style,
    assert_polling_runs,
)
from tests.sdk.workload import nap

N = 1000


def test_client_polling_runs_1000_tasks(platform: Platform) -> None:
    assert_polling_runs(platform, N)


def test_async_client_runs_1000_tasks(platform: Platform) -> None:
    assert_async_runs(platform, N)


def test_executor_runs_1000_tasks(platform: Platform) -> None:
    assert_executor_runs(platform, N)


def test_failures_come_back_as_task_failed_in_all_three_styles(platform: Platform) -> None:
    assert_failures_in_every_style(platform)


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


def _assert_walltime_exceeded(exc: BaseException | None) -> None:
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
