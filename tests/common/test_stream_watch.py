"""StreamWatcher: one blocked XREAD serves every watch; a watch it does not cover wakes it.

The read blocks for a minute, so an entry seen within the test's bound on a stream the
read did not name proves that the new watch woke the read (CLIENT UNBLOCK)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service_common.stream_watch import StreamWatcher, entry_key

BOUND_S = 20.0


@pytest.fixture
async def watcher(aredis: aioredis.Redis) -> AsyncIterator[StreamWatcher]:
    watcher = StreamWatcher(aredis, block_ms=60_000)
    stopped = asyncio.Event()
    task = asyncio.create_task(watcher.run(stopped))
    try:
        yield watcher
    finally:
        stopped.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_reading(watcher: StreamWatcher) -> None:
    for _ in range(2000):
        if watcher.reading_all():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the watcher never read")


def test_entry_ids_sort_as_redis_orders_them() -> None:
    assert entry_key("5-1") < entry_key("10-0") < entry_key("10-2")
    assert entry_key("0") == (0, 0)


async def test_one_read_serves_every_watch_and_a_new_stream_wakes_it(
    watcher: StreamWatcher, aredis: aioredis.Redis, key_prefix: str
) -> None:
    first, second = f"{key_prefix}:a", f"{key_prefix}:b"
    early = await aredis.xadd(first, {"n": "0"})
    with watcher.watch({first: "0-0"}) as old, watcher.watch({first: early}) as new:
        # The older cursor sees the entry already there; the newer one does not.
        assert [e[1][1] for e in await old.wait(BOUND_S)] == [{"n": "0"}]
        await until_reading(watcher)
        reads = watcher.reads
        with watcher.watch({second: "0-0"}) as other:
            await aredis.xadd(second, {"n": "1"})
            got = await other.wait(BOUND_S)
            assert [(stream, fields) for stream, (_, fields) in got] == [(second, {"n": "1"})]
            assert watcher.reads > reads  # the minute-long read was cut short
        await aredis.xadd(first, {"n": "2"})
        assert [e[1][1] for e in await new.wait(BOUND_S)] == [{"n": "2"}]
        assert [e[1][1] for e in await old.wait(BOUND_S)] == [{"n": "2"}]
        assert await new.wait(0) == []
    assert watcher.watches == 0
