"""``get_result(timeout_s=...)`` and ``wait`` long-poll: they return once the result exists,
in a request or two, where a sleep loop would have sent one request per ``poll_s``.

The tasks nap for a second on a served agent; the tests count the HTTP requests the wait
made (a wrapper of one try, for each client), not how long it took."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fxbroker import AsyncClient, Client, TaskPending
from sdk import _base
from sdk.transport import Answer
from tests.sdk.stack import Services, Stack, threaded
from tests.sdk.workload import nap

POLL_S = 0.01
"""Were the clients to sleep-poll, a one-second task would cost about 100 requests."""


@pytest.fixture
def platform(database_url: str, redis_url: str, key_prefix: str) -> Iterator[Services]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack) as (services, _):
        yield services


class Counter:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def sync(self, client: Client) -> None:
        """Count the paths ``client`` sends requests to (each try of each request)."""
        send_once = client._http.request

        def counted(method: str, path: str, **options: Any) -> Answer:
            self.paths.append(path.partition("?")[0])
            return send_once(method, path, **options)

        client._http.request = counted  # type: ignore[method-assign]

    def around(self, client: AsyncClient) -> None:
        """Count the paths ``client`` sends requests to (each try of each request)."""
        send_once = client._request

        async def counted(request: _base.Request) -> Any:
            self.paths.append(request.path.partition("?")[0])
            return await send_once(request)

        client._request = counted  # type: ignore[method-assign]


def test_client_wait_and_get_result_return_in_few_requests(platform: Services) -> None:
    s = platform
    with Client(s.url, s.token, endpoint_id=s.endpoint_id) as client:
        fid = client.register_function(nap)
        counter = Counter()
        counter.sync(client)
        first = client.run(1.0, function_id=fid)
        assert client.get_result(first, timeout_s=60) == 1.0
        # The submit, then one long poll held until the task finished.
        assert counter.paths[1:] == [f"/v1/tasks/{first}"]
        counter.paths.clear()
        ids = [client.run(1.0, function_id=fid) for _ in range(2)]
        asked = len(counter.paths)
        results = client.wait(ids, timeout_s=60, poll_s=POLL_S)
        assert [r["result"] for r in results.values()] == [1.0, 1.0]
        assert 1 <= len(counter.paths) - asked <= 3
        assert set(counter.paths[asked:]) == {"/v1/tasks/batch_status"}


def test_a_wait_that_ends_first_raises_as_before(platform: Services) -> None:
    s = platform
    with Client(s.url, s.token) as client:
        fid = client.register_function(nap)
        task_id = client.run(30.0, endpoint_id=s.idle_endpoint_id, function_id=fid)
        with pytest.raises(TaskPending):
            client.get_result(task_id, timeout_s=0.3)
        with pytest.raises(TimeoutError):
            client.wait([task_id], timeout_s=0.3, poll_s=POLL_S)


def test_async_client_twins(platform: Services) -> None:
    s = platform

    async def main() -> tuple[list[str], list[str]]:
        async with AsyncClient(s.url, s.token, endpoint_id=s.endpoint_id) as client:
            fid = await client.register_function(nap)
            batch = client.create_batch()
            for _ in range(2):
                batch.add(fid, args=(1.0,))
            ids = await client.batch_run(s.endpoint_id, batch)
            counter = Counter()
            counter.around(client)
            assert await client.get_result(ids[0], timeout_s=60) == 1.0
            got = list(counter.paths)
            counter.paths.clear()
            await client.wait(ids, timeout_s=60, poll_s=POLL_S)
            return got, counter.paths

    single, waited = asyncio.run(main())
    assert len(single) == 1 and 1 <= len(waited) <= 3


def test_the_clock_sleeps_only_for_a_service_that_does_not_hold_answers() -> None:
    clock = _base.LongPoll(timeout_s=50.0, poll_s=0.5, now=100.0)
    assert clock.wait_s(100.0) == _base.LONG_POLL_S
    assert clock.wait_s(140.0) == 10.0 and clock.wait_s(151.0) == 0.0
    assert clock.expired(150.0) and not clock.expired(149.0)
    # Held for the wait, or answered early because something finished: ask again at once.
    assert clock.pause_s(asked_s=20.0, took_s=20.0, progressed=False, now=120.0) == 0.0
    assert clock.pause_s(asked_s=20.0, took_s=0.01, progressed=True, now=120.0) == 0.0
    assert clock.pause_s(asked_s=20.0, took_s=0.01, progressed=True, now=120.0, pending=1) == 0.0
    # Results came and many tasks are left: pause as long as the answer took, at most 20 ms,
    # so the next answer gathers more instead of re-reading the same pending tasks at once.
    gather = clock.pause_s(asked_s=20.0, took_s=0.004, progressed=True, now=120.0, pending=900)
    assert gather == 0.004
    held = clock.pause_s(asked_s=20.0, took_s=3.0, progressed=True, now=120.0, pending=900)
    assert held == _base.GATHER_MAX_S
    late = clock.pause_s(asked_s=20.0, took_s=3.0, progressed=True, now=149.995, pending=900)
    assert late == pytest.approx(0.005)
    # Answered at once with nothing finished: an older service; poll every poll_s.
    assert clock.pause_s(asked_s=20.0, took_s=0.01, progressed=False, now=120.0) == 0.5
    assert clock.pause_s(asked_s=20.0, took_s=0.01, progressed=False, now=149.8) == pytest.approx(
        0.2
    )
    with pytest.raises(ValueError):
        _base.LongPoll(timeout_s=-1.0, poll_s=0.5, now=0.0)
    request = _base.batch_status(["a"], wait_s=20.0)
    assert request.path == "/v1/tasks/batch_status?wait_s=20.000"
    assert request.wait_s == 20.0  # what the clients add to their read timeout
    assert _base.get_task("t").path == "/v1/tasks/t"
    calls = _base.get_batch_result([f"t{i}" for i in range(1500)], wait_s=5.0)
    assert [r.wait_s for r in calls.requests] == [5.0, 0.0]
