"""The shared retry policy: capped, jittered backoff and one log line per outage edge."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service_common.redis_client import connect_redis, redis_unavailable
from service_common.retry import Backoff, Outage, retry
from tests.conftest import free_port

LOG = logging.getLogger("tests.retry")
QUICK = Backoff(initial_s=0.001, max_s=0.002)


def test_backoff_doubles_up_to_its_cap_and_jitters_the_second_half() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    assert [backoff.delay_s(n, draw=1.0) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff.delay_s(3, draw=0.0) == pytest.approx(0.2)  # half of 0.4
    assert backoff.delay_s(10_000, draw=0.5) == pytest.approx(0.75)  # no overflow
    assert 0.5 <= backoff.delay_s(50) <= 1.0


def test_backoff_refuses_a_policy_that_cannot_work() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, max_s=1.0)
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage("Redis", logger=LOG, clock=clock)
    caplog.set_level(logging.INFO, logger=LOG.name)
    assert outage.recovered() is None  # nothing to end
    assert outage.failed(ConnectionError("refused")) is True
    for _ in range(50):
        assert outage.failed(ConnectionError("refused")) is False
    assert outage.down
    clock.now += 2.5
    assert outage.recovered() == pytest.approx(2.5)
    assert outage.recovered() is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Redis is unavailable (ConnectionError: refused); waiting for it with backoff",
        "Redis is back after 2.5 s",
    ]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback per retry
    assert (outage.outages, outage.last_duration_s, outage.down) == (1, 2.5, False)


def test_a_failure_begun_before_the_recovery_starts_no_new_outage() -> None:
    clock = Clock()
    outage = Outage("SQL", logger=LOG, clock=clock)
    outage.failed(OSError("down"))
    started = outage.now()  # an attempt in flight across the recovery
    clock.now += 1
    outage.recovered()
    clock.now += 5
    assert outage.failed(OSError("stale connection"), attempt_started=started) is False
    assert not outage.down
    assert outage.failed(OSError("down again"), attempt_started=outage.now()) is True


def test_failures_just_after_a_recovery_are_aftershocks_not_a_new_outage() -> None:
    clock = Clock()
    outage = Outage("Redis", logger=LOG, settle_s=1.0, clock=clock)
    outage.failed(ConnectionError("refused"))
    clock.now += 3
    outage.recovered()
    clock.now += 0.5
    assert outage.failed(ConnectionError("closed by server")) is False  # a stale connection
    assert (outage.down, outage.outages) == (False, 1)
    clock.now += 1
    assert outage.failed(ConnectionError("refused")) is True
    assert outage.outages == 2


async def test_retry_waits_out_transient_errors_and_returns_the_result() -> None:
    outage = Outage("Redis", logger=LOG)
    failures = [ConnectionError("a"), ConnectionError("b"), ConnectionError("c")]

    async def op() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = await retry(
        op, transient=lambda e: isinstance(e, ConnectionError), outage=outage, backoff=QUICK
    )
    assert result == "done"
    assert (outage.outages, outage.down) == (1, False)


async def test_retry_raises_other_errors_at_once_and_gives_up_once_stopped() -> None:
    outage = Outage("Redis", logger=LOG)
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await retry(wrong, transient=redis_unavailable, outage=outage, backoff=QUICK)
    assert calls == 1 and not outage.down

    stop = asyncio.Event()

    async def away() -> None:
        stop.set()  # a stop requested while Redis is away
        raise OSError("refused")

    with pytest.raises(OSError):
        await retry(away, transient=redis_unavailable, outage=outage, stop=stop)
    assert outage.down


async def test_a_redis_that_is_not_there_is_an_outage_not_a_bug() -> None:
    client = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(Exception) as raised:
            await client.ping()
        assert redis_unavailable(raised.value)
    finally:
        await client.aclose()
    assert not redis_unavailable(ValueError("wrong"))
