"""The AMQP publisher against real Redis and RabbitMQ: what it publishes (parsed by the
Globus Compute SDK's own ``messagepack``), in which order, once, across restarts, a crash
between confirm and cursor, two copies, and outages of either service."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result

from amqp_publisher.publisher import START, Publisher
from sdk.keys import Keys
from sdk.states import TaskState
from service_common.amqp import STREAM_ID_HEADER, queue_name
from tests.amqp.helpers import (
    BIG,
    FakeOutcome,
    failure,
    open_group,
    settings,
    settle,
    success,
    value_of,
)
from tests.private_redis import PrivateRedis
from tests.rabbitmq import Broker
from tests.tcp_proxy import TcpProxy

DEADLINE_S = 30.0


def results(messages: list) -> list[Result]:  # type: ignore[type-arg]
    parsed = [messagepack.unpack(m.body) for m in messages]
    assert all(isinstance(r, Result) for r in parsed)
    return parsed


async def test_results_are_published_in_stream_order_as_the_sdk_reads_them(
    redis_url: str, amqp_url: str, key_prefix: str, aredis: aioredis.Redis, broker: Broker
) -> None:
    keys, tg = Keys(key_prefix), broker.group()
    await open_group(aredis, key_prefix, tg)
    written = [
        await settle(aredis, keys, tg, outcome)
        for outcome in (
            success(1),
            success(BIG),
            failure("bad value 3"),
            FakeOutcome(TaskState.CANCELLED),
            success({"k": [2]}),
        )
    ]
    async with Publisher(settings(redis_url, amqp_url, key_prefix)) as publisher:
        await publisher.run(burst=True)
        assert publisher.published == 5
    messages = await broker.drain(queue_name(tg))
    got = results(messages)
    assert [str(r.task_id) for r in got] == [task_id for task_id, _ in written]
    assert [m.headers[STREAM_ID_HEADER] for m in messages] == [entry for _, entry in written]
    assert all(m.delivery_mode == 2 and m.timestamp is not None for m in messages)
    assert [m.message_id for m in messages] == [task_id for task_id, _ in written]
    assert [value_of(r.data) for r in (got[0], got[1], got[4])] == [1, BIG, {"k": [2]}]
    assert not any(r.is_error for r in (got[0], got[1], got[4]))
    assert got[2].is_error and got[2].error_details is not None
    assert got[2].error_details.code == "RemoteExecutionError"
    assert got[2].data.startswith("Traceback (most recent call last)")
    assert "ValueError: bad value 3" in got[2].data
    assert got[3].is_error and got[3].data.startswith("TaskCancelled")
    cursor = await aredis.get(Keys(key_prefix).amqp_cursor(tg))
    assert cursor == written[-1][1]


async def test_a_restart_resumes_after_the_cursor(
    redis_url: str, amqp_url: str, key_prefix: str, aredis: aioredis.Redis, broker: Broker
) -> None:
    keys, tg = Keys(key_prefix), broker.group()
    await open_group(aredis, key_prefix, tg)
    first = [await settle(aredis, keys, tg, success(i)) for i in range(3)]
    async with Publisher(settings(redis_url, amqp_url, key_prefix)) as publisher:
        await publisher.run(burst=True)
    # The graceful stop released the lease: a new copy takes the group at once.
    assert await aredis.get(Keys(key_prefix).amqp_lease(tg)) is None
    later = [await settle(aredis, keys, tg, success(i)) for i in range(3, 5)]
    async with Publisher(settings(redis_url, amqp_url, key_prefix)) as publisher:
        await publisher.run(burst=True)
        assert publisher.published == 2
    got = results(await broker.drain(queue_name(tg)))
    assert [str(r.task_id) for r in got] == [task_id for task_id, _ in first + later]


async def test_a_crash_between_confirm_and_cursor_publishes_nothing_twice(
    redis_url: str, amqp_url: str, key_prefix: str, aredis: aioredis.Redis, broker: Broker
) -> None:
    """The window a SIGKILL can hit: the broker confirmed, the cursor was not written. The
    next copy reads the group's ledger and resumes after what the queue already got."""
    keys, amqp_keys, tg = Keys(key_prefix), Keys(key_prefix), broker.group()
    await open_group(aredis, key_prefix, tg)
    tap = await broker.tap(tg)
    written = [await settle(aredis, keys, tg, success(i)) for i in range(4)]
    async with Publisher(settings(redis_url, amqp_url, key_prefix)) as publisher:
        await publisher.run(burst=True)
    await aredis.set(amqp_keys.amqp_cursor(tg), START)  # as if killed before the cursor write
    more = await settle(aredis, keys, tg, success(99))
    async with Publisher(settings(redis_url, amqp_url, key_prefix)) as publisher:
        await publisher.run(burst=True)
        assert publisher.published == 1
    ids = [str(r.task_id) for r in results(await broker.drain(tap.name))]
    assert ids == [task_id for task_id, _ in [*written, more]]
    assert await aredis.get(amqp_keys.amqp_cursor(tg)) == more[1]


async def test_two_copies_never_publish_a_group_twice(
    redis_url: str, amqp_url: str, key_prefix: str, aredis: aioredis.Redis, broker: Broker
) -> None:
    keys = Keys(key_prefix)
    groups = [broker.group() for _ in range(4)]
    expected: dict[str, list[str]] = {}
    for tg in groups:
        await open_group(aredis, key_prefix, tg)
        expected[tg] = [(await settle(aredis, keys, tg, success(i)))[0] for i in range(40)]
    copies = [
        Publisher(settings(redis_url, amqp_url, key_prefix, batch_max=7), instance=name)
        for name in ("a", "b")
    ]
    async with copies[0], copies[1]:
        await asyncio.gather(*(copy.run(burst=True) for copy in copies))
        assert copies[0].held.isdisjoint(copies[1].held)
        assert sum(copy.published for copy in copies) == 160
    for tg in groups:
        got = results(await broker.drain(queue_name(tg)))
        assert [str(r.task_id) for r in got] == expected[tg]


async def _until(condition: object, what: str) -> None:
    """Await ``condition()`` (a callable returning bool or an awaitable of one) until it
    holds; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"{what}: not within {DEADLINE_S} s"
        await asyncio.sleep(0.02)


async def test_rabbitmq_away_is_waited_out(
    redis_url: str,
    amqp_url: str,
    key_prefix: str,
    aredis: aioredis.Redis,
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    keys, tg = Keys(key_prefix), broker.group()
    await open_group(aredis, key_prefix, tg)
    parts = urlsplit(amqp_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
        via_proxy = urlunsplit(parts._replace(netloc=netloc))
        first = [(await settle(aredis, keys, tg, success(i)))[0] for i in range(3)]
        caplog.set_level(logging.WARNING, logger="amqp_publisher.publisher")
        async with Publisher(settings(redis_url, via_proxy, key_prefix)) as publisher:
            running = asyncio.create_task(publisher.run())
            await _until(lambda: publisher.published == 3, "the first results")
            await proxy.cut()
            later = [(await settle(aredis, keys, tg, success(i)))[0] for i in range(3, 6)]
            await _until(lambda: "RabbitMQ is unavailable" in caplog.text, "the outage")
            assert not running.done()
            await proxy.restore()
            await _until(lambda: publisher.published == 6, "the later results")
            publisher.stop()
            await running
    assert "RabbitMQ is back" in caplog.text
    got = results(await broker.drain(queue_name(tg)))
    assert [str(r.task_id) for r in got] == first + later


async def test_redis_away_is_waited_out(
    private_redis: PrivateRedis, amqp_url: str, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, tg = "fxt-amqp", broker.group()
    keys = Keys(prefix)
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await open_group(client, prefix, tg)
        first = [(await settle(client, keys, tg, success(i)))[0] for i in range(3)]
        caplog.set_level(logging.WARNING, logger="amqp_publisher.publisher")
        async with Publisher(settings(private_redis.url, amqp_url, prefix)) as publisher:
            running = asyncio.create_task(publisher.run())
            await _until(lambda: publisher.published == 3, "the first results")
            await asyncio.to_thread(private_redis.kill)
            await _until(lambda: "Redis is unavailable" in caplog.text, "the outage")
            assert not running.done()
            await asyncio.to_thread(private_redis.start)
            await client.aclose()  # the test's own connection died with the server
            client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
            later = [(await settle(client, keys, tg, success(i)))[0] for i in range(3, 6)]
            await _until(lambda: publisher.published == 6, "the later results")
            publisher.stop()
            await running
    finally:
        await client.aclose()
    got = results(await broker.drain(queue_name(tg)))
    assert [str(r.task_id) for r in got] == first + later


def test_the_settings_name_what_is_missing_or_wrong() -> None:
    from amqp_publisher.settings import PublisherSettings
    from service_common.errors import SettingsError

    with pytest.raises(SettingsError, match="FXBROKER_AMQP_URL is not set"):
        PublisherSettings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(SettingsError, match="amqp_url must be a amqp:// or amqps:// URL"):
        PublisherSettings.from_env(
            {"REDIS_URL": "redis://127.0.0.1:6379/0", "FXBROKER_AMQP_URL": "http://x"}
        )
    with pytest.raises(SettingsError, match="FXBROKER_AMQP_LEASE_MS"):
        PublisherSettings.from_env(
            {
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "FXBROKER_AMQP_URL": "amqp://127.0.0.1/",
                "FXBROKER_AMQP_LEASE_MS": "soon",
            }
        )
