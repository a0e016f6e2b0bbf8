"""The SDK rides out outages, against real servers: a proxy that answers 503, drops
connections or loses answers in front of the real web service; a web service process killed
with SIGKILL and started again amid an Executor run; a platform that is gone for good.

The only timing asserts are generous upper bounds that prove "does not hang"."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from fxbroker import APIError, AsyncClient, Client, ConnectionFailed, Executor
from tests.conftest import free_port
from tests.sdk.flaky import FlakyProxy, FlakyWsProxy, Seen
from tests.sdk.stack import Runner, Services, Stack, threaded
from tests.sdk.workload import square

# Known leak, under investigation: about one run in eight, a socket of this process to the
# web service that the test kills (an SDK or in-process-stack connection cut by the killed
# peer, seen both as an asyncio transport and as a bare socket, the latter likely a connect
# cancelled by a retry deadline) is garbage-collected unclosed. Only those two warnings are let
# through, and only in this module; every other warning is still an error.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function _SelectorTransport.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

TIMEOUT_S = 120.0
"""A safety net so a broken retry loop fails the test instead of hanging it."""
BOUND_S = 1.0
"""The ``retry_for_s`` of the tests where the platform is gone for good."""
DOES_NOT_HANG_S = 60.0
"""Far above ``BOUND_S`` plus a few attempts: the generous upper bound of those tests."""


@pytest.fixture
def platform(
    database_url: str, redis_url: str, key_prefix: str
) -> Iterator[tuple[Services, Stack, Runner]]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack) as (services, runner):
        yield services, stack, runner


def submits(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.path.endswith("/submit")]


def test_a_submit_through_503s_drops_and_a_lost_answer_creates_each_task_once(
    platform: tuple[Services, Stack, Runner],
) -> None:
    s = platform[0]
    with (
        FlakyProxy(s.url) as proxy,
        Client(proxy.url, s.token, ws_url=s.ws_url, retry_for_s=TIMEOUT_S) as client,
    ):
        fid = client.register_function(square)
        batch = client.create_batch()
        for i in range(10):
            batch.add(fid, (i,))
        proxy.play(["lost", "503", "drop", "lost", "forward"])
        task_ids = client.batch_run(s.endpoint_id, batch)
        group = client.task_group_id
    tries = submits(proxy.seen)
    assert [t.step for t in tries] == ["lost", "503", "drop", "lost", "forward"]
    keys = {t.headers.get("idempotency-key") for t in tries}
    assert len(keys) == 1 and None not in keys  # one key, sent on every retry
    assert len({t.body for t in tries}) == 1  # the same bytes: the service's fingerprint holds
    assert len(set(task_ids)) == 10
    assert group is not None
    with Client(s.url, s.token) as direct:
        page = direct.get_task_group(group)
        assert page["total"] == 10 and page["task_ids"] == task_ids  # nothing queued twice
        assert direct.wait(task_ids, timeout_s=TIMEOUT_S)[task_ids[3]]["result"] == 9


async def test_the_async_client_retries_the_same_way(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    async with stack as s:
        await stack.serve(s.endpoint_id)
        with FlakyProxy(s.url) as proxy:
            proxy.play(["503", "drop"])  # the registration
            async with AsyncClient(
                proxy.url, s.token, ws_url=s.ws_url, retry_for_s=TIMEOUT_S
            ) as ac:
                fid = await ac.register_function(square)
                proxy.play(["lost", "503"])  # the submit
                assert await ac.run(7, function_id=fid, endpoint_id=s.endpoint_id) == 49
                group = ac.task_group_id
    assert [t.step for t in proxy.seen[:3]] == ["503", "drop", "forward"]
    tries = submits(proxy.seen)
    assert [t.step for t in tries] == ["lost", "503", "forward"]
    assert len({t.headers["idempotency-key"] for t in tries}) == 1
    assert group is not None


def test_the_bound_ends_calls_to_a_dead_or_unavailable_service() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with Client(dead, "token", retry_for_s=BOUND_S) as client, pytest.raises(ConnectionFailed) as e:
        client.whoami()
    assert e.value.url == dead
    assert "gave up after trying for" in str(e.value) and "retry_for_s=1" in str(e.value)
    with Client(dead, "token", retry_for_s=0) as client, pytest.raises(ConnectionFailed) as e:
        client.whoami()
    assert "retries are off" in str(e.value)
    with (
        FlakyProxy() as always_503,  # no upstream: every request is answered 503
        Client(always_503.url, "token", retry_for_s=BOUND_S) as client,
        pytest.raises(APIError) as answered,
    ):
        client.whoami()
    assert answered.value.status == 503 and "gave up after trying for" in answered.value.message
    assert len(always_503.seen) >= 2  # it was retried
    assert time.monotonic() - started < DOES_NOT_HANG_S


def run_bounded(fn: object) -> float:
    """Run ``fn`` in a thread; fail the test (instead of hanging it) if it does not return."""
    assert callable(fn)
    started = time.monotonic()
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(DOES_NOT_HANG_S)
    assert not thread.is_alive(), f"still running after {DOES_NOT_HANG_S} s"
    return time.monotonic() - started


def test_leaving_an_executor_is_bounded_when_the_platform_is_gone() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    dead_ws = f"ws://127.0.0.1:{free_port()}"
    client = Client(dead, "token", ws_url=dead_ws, retry_for_s=BOUND_S)
    ex = Executor("some-endpoint", client=client, batch_size=4)
    futures = [ex.submit(square, i) for i in range(10)]  # registration, then submits fail
    futures += [ex.submit_to_registered_function("fid", (i,)) for i in range(10)]  # submits
    run_bounded(lambda: ex.__exit__(None, None, None))
    for future in futures:
        error = future.exception(0)
        assert isinstance(error, ConnectionFailed) and error.url == dead, error
    client.close()


def test_futures_fail_when_the_ws_service_stays_down_and_exit_is_bounded(
    platform: tuple[Services, Stack, Runner],
) -> None:
    s, stack, runner = platform
    with Client(s.url, s.token, ws_url=s.ws_url, retry_for_s=BOUND_S) as client:
        ex = Executor(s.idle_endpoint_id, client=client)  # no agent: results never come
        futures = [ex.submit(square, i) for i in range(5)]
        ex.flush()
        assert all(f.task_id for f in futures)
        runner.call(stack.stop_ws())
        try:
            run_bounded(lambda: ex.shutdown(wait=True))
            for future in futures:
                error = future.exception(0)
                assert isinstance(error, ConnectionFailed), error
                assert error.url.startswith(s.ws_url) and "retry_for_s=1" in error.reason
        finally:
            runner.call(stack.start_ws())


def test_shutdown_cancelling_futures_is_bounded_when_the_platform_is_gone() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = Client(dead, "token", ws_url=f"ws://127.0.0.1:{free_port()}", retry_for_s=BOUND_S)
    ex = Executor("some-endpoint", client=client)
    futures = [ex.submit_to_registered_function("fid", (i,)) for i in range(5)]
    run_bounded(lambda: ex.shutdown(wait=True, cancel_futures=True))
    assert all(f.done() for f in futures)
    assert all(f.cancelled() or isinstance(f.exception(0), ConnectionFailed) for f in futures)
    client.close()


N = 300


def test_web_killed_and_restarted_amid_an_executor_run_completes_every_future_once(
    database_url: str, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sdk.retry")
    stack = Stack(
        database_url=database_url, redis_url=redis_url, key_prefix=key_prefix, web_process=True
    )
    with (
        threaded(stack) as (s, runner),
        Client(s.url, s.token, ws_url=s.ws_url, retry_for_s=TIMEOUT_S) as client,
        Executor(s.endpoint_id, client=client, batch_size=16) as ex,
    ):
        futures = [ex.submit(square, i) for i in range(N // 2)]
        ex.flush()  # no submit in flight at the kill: those below meet the outage
        done, _ = concurrent.futures.wait(futures[:1], TIMEOUT_S)
        assert done
        runner.call(stack.kill_web())
        futures += [ex.submit(square, i) for i in range(N // 2, N)]
        runner.call(stack.start_web())
        values = [f.result(TIMEOUT_S) for f in futures]
        group = ex.task_group_id
        assert group is not None
        page = client.get_task_group(group, limit=N + 100)
    assert values == [i * i for i in range(N)]
    assert page["total"] == N and len(set(page["task_ids"])) == N  # none lost, none twice
    assert {f.task_id for f in futures} == set(page["task_ids"])
    assert any("unavailable" in r.getMessage() for r in caplog.records)  # an outage was met


async def test_the_result_listener_retries_503_handshakes_and_unavailable_frames(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    async with stack as s:
        await stack.serve(s.endpoint_id)
        async with FlakyWsProxy(s.ws_url, refuse=2, unavailable=2) as proxy:
            async with AsyncClient(s.url, s.token, ws_url=proxy.url, retry_for_s=TIMEOUT_S) as ac:
                fid = await ac.register_function(square)
                assert await ac.run(8, function_id=fid, endpoint_id=s.endpoint_id) == 64
            assert (proxy.refused, proxy.unavailable_sent, proxy.relayed) == (2, 2, 1)
            assert ac.results.subscriptions == 1

            async with FlakyWsProxy(s.ws_url, refuse=10**6) as refusing:
                async with AsyncClient(
                    s.url, s.token, ws_url=refusing.url, retry_for_s=BOUND_S
                ) as ac:
                    fid = await ac.register_function(square)
                    with pytest.raises(ConnectionFailed) as failed:
                        await asyncio.wait_for(
                            ac.run(9, function_id=fid, endpoint_id=s.endpoint_id), DOES_NOT_HANG_S
                        )
    assert failed.value.url.startswith(refusing.url) and "HTTP 503" in failed.value.reason
    assert refusing.refused >= 2
