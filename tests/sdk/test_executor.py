"""The Executor against the real web service, ws service, agent and Redis."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from fxbroker import Client, Executor
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
    with Client(s.url, s.token, ws_url=s.ws_url) as client:
        yield client


def test_submit_and_map_return_results(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    with Executor(s.endpoint_id, client=client, batch_size=16) as ex:
        futures = [ex.submit(square, i) for i in range(100)]
        assert [f.result(TIMEOUT_S) for f in futures] == [i * i for i in range(100)]
        assert list(ex.map(square, range(10), timeout=TIMEOUT_S)) == [i * i for i in range(10)]
        assert ex.submit(scale, 4, by=5).result(TIMEOUT_S) == 20
        fid = client.register_function(async_add)
        assert ex.submit_to_registered_function(fid, (1,), {"b": 2}).result(TIMEOUT_S) == 3
        assert ex.task_group_id is not None
    assert len(client.get_task_group(ex.task_group_id)["task_ids"]) == 112
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_a_failing_function_sets_the_remote_exception(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    with Executor(s.endpoint_id, client=client) as ex:
        bad, good = ex.submit(fail, "executor says no"), ex.submit(square, 6)
        assert good.result(TIMEOUT_S) == 36
        error = bad.exception(TIMEOUT_S)
    assert isinstance(error, ValueError) and str(error) == "executor says no"
    assert "raise ValueError(message)" in error.remote_traceback  # type: ignore[attr-defined]


def test_shutdown_with_cancel_futures_does_not_wait_for_queued_tasks(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    ex = Executor(s.idle_endpoint_id, client=client)  # no agent: these never finish
    futures = [ex.submit(square, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    ex.shutdown()  # a second shutdown is harmless


def test_shutdown_from_a_done_callback_does_not_deadlock(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    ex = Executor(s.endpoint_id, client=client)
    closed = concurrent.futures.Future[None]()

    def on_done(_: concurrent.futures.Future[int]) -> None:
        ex.shutdown(wait=True)  # runs on the Executor's own thread
        closed.set_result(None)

    future = ex.submit(square, 9)
    future.add_done_callback(on_done)
    assert future.result(TIMEOUT_S) == 81
    closed.result(TIMEOUT_S)
    ex.shutdown(wait=True)


def test_ten_thousand_submits_wake_the_loop_once_and_cost_few_requests(
    platform: tuple[Services, Stack, Runner], client: Client
) -> None:
    s = platform[0]
    with Executor(s.idle_endpoint_id, client=client) as ex:
        gate = threading.Event()
        ex._loop.call_soon_threadsafe(gate.wait)  # the loop thread is busy meanwhile
        futures = [ex.submit(square, i) for i in range(10_000)]
        gate.set()
        assert ex.loop_wakes == 1  # one wake took the whole burst
        ex.flush(TIMEOUT_S)
        assert all(f.task_id for f in futures)
        # 1, 2, 4, ... 512, then batches of 1,000: not one request per task.
        assert ex.submit_requests <= 20
        more = [ex.submit(square, i) for i in range(10_000)]  # the loop free to wake now
        ex.flush(TIMEOUT_S)
        assert ex.loop_wakes < 1 + len(more) // 10
        ex.shutdown(wait=True, cancel_futures=True)
    group = client.get_task_group(ex.task_group_id or "", limit=1)
    assert group["total"] == 20_000
