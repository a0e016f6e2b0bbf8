"""The gateway's reader against real Redis, with stand-in sessions: which streams each round
reads. A copy serving many endpoints reads, round after round, only those that may hold
entries; a quiet endpoint's entry still arrives (the wait returns at once for it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from service_common.redis_client import connect_redis
from service_common.retry import Outage
from service_common.tasks import stream
from service_common.tasks.stream import TaskEntry
from ws_service.gateway import reader as reader_module
from ws_service.gateway.reader import Reader

ENDPOINTS = [f"ep{i}" for i in range(6)]


@dataclass
class StandIn:
    """A session that wants ``want`` tasks at all times (``once``: ``want`` in all) and
    keeps what it is given."""

    endpoint_id: str
    want: int = 10
    once: bool = False
    got: list[TaskEntry] = field(default_factory=list)
    told_nothing: int = 0

    @property
    def wants(self) -> int:
        return max(0, self.want - len(self.got)) if self.once else self.want

    def deliver(self, entries: list[TaskEntry]) -> None:
        self.got.extend(entries)

    def found_nothing(self) -> None:
        self.told_nothing += 1


@pytest.fixture
def waits() -> list[int]:
    """The count each of the reader's waits asked of every stream, in order."""
    return []


@pytest.fixture
def block_ms() -> int:
    """How long the reader's waits block."""
    return 200


@pytest.fixture
async def reading(
    redis_url: str,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    waits: list[int],
    block_ms: int,
) -> AsyncIterator[tuple[Reader, dict[str, StandIn], list[set[str]]]]:
    reads: list[set[str]] = []
    read_streams = stream.read_streams

    async def recorded(redis: Any, counts: Mapping[str, int], consumer: str) -> Any:
        reads.append(set(counts))
        return await read_streams(redis, counts, consumer)

    read_blocking = stream.read_blocking

    async def recorded_wait(*args: Any, count: int, block_ms: int, **kwargs: Any) -> Any:
        waits.append(count)
        return await read_blocking(*args, count=count, block_ms=block_ms, **kwargs)

    monkeypatch.setattr(reader_module, "read_streams", recorded)
    monkeypatch.setattr(reader_module, "read_blocking", recorded_wait)
    redis = connect_redis(redis_url)  # as the gateway's: no timeout cuts a wait short
    reader = Reader(
        redis, keys, consumer="gw-test", block_ms=block_ms, lease_ms=600_000,
        outage=Outage("redis", logger=logging.getLogger(__name__)),
    )  # fmt: skip
    sessions = {eid: StandIn(eid) for eid in ENDPOINTS}
    for session in sessions.values():
        reader.add(session)
    stopped = asyncio.Event()
    running = asyncio.create_task(reader.run(stopped))
    try:
        yield reader, sessions, reads
    finally:
        stopped.set()  # and cancelled, as the gateway stops it: a wait may block for long
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await redis.aclose()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition()``; fail saying ``what`` did not happen within 10 s."""
    try:
        async with asyncio.timeout(10):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"no {what} within 10 s") from None


async def test_rounds_read_the_streams_that_may_hold_entries(
    reading: tuple[Reader, dict[str, StandIn], list[set[str]]],
    aredis: aioredis.Redis,
    keys: Keys,
) -> None:
    _, sessions, reads = reading
    await until(lambda: all(s.told_nothing for s in sessions.values()), "first round")
    assert reads[0] == {keys.endpoint_tasks(eid) for eid in ENDPOINTS}
    busy, quiet = ENDPOINTS[0], ENDPOINTS[3]
    for n in range(1, 4):
        before = len(reads)
        await aredis.xadd(keys.endpoint_tasks(busy), {"task_id": f"t{n}", "payload": "p"})
        await until(lambda: len(sessions[busy].got) == n, "entry of the busy endpoint")  # noqa: B023
        await until(lambda: len(reads) > before, "round after the wait")  # noqa: B023
        # The wait returned the busy endpoint's entry: only its stream may hold more.
        assert reads[before:] == [{keys.endpoint_tasks(busy)}]
    await aredis.xadd(keys.endpoint_tasks(quiet), {"task_id": "q", "payload": "p"})
    await until(lambda: len(sessions[quiet].got) == 1, "entry of the quiet endpoint")
    assert [e.task_id for e in sessions[quiet].got] == ["q"]
    assert all(not s.got for eid, s in sessions.items() if eid not in (busy, quiet))


async def test_a_session_that_wants_more_has_its_stream_read_again(
    reading: tuple[Reader, dict[str, StandIn], list[set[str]]],
    keys: Keys,
) -> None:
    reader, sessions, reads = reading
    await until(lambda: all(s.told_nothing for s in sessions.values()), "first round")
    before = len(reads)
    reader.wake(sessions[ENDPOINTS[2]])
    await until(lambda: sessions[ENDPOINTS[2]].told_nothing == 2, "read for the new want")
    assert {keys.endpoint_tasks(ENDPOINTS[2])} in reads[before:]
    assert all(s.told_nothing == 1 for eid, s in sessions.items() if eid != ENDPOINTS[2])


@pytest.mark.parametrize("block_ms", [120_000])  # only being cut short ends the first wait
async def test_a_wait_asking_for_more_than_is_now_wanted_is_cut_short(
    reading: tuple[Reader, dict[str, StandIn], list[set[str]]],
    waits: list[int],
    aredis: aioredis.Redis,
    keys: Keys,
) -> None:
    """An agent that withdraws credit while the reader waits: what arrives next is read up to
    the new want, and the rest stays in the stream as it was written (none read only to go
    back to the stream's end under a new id)."""
    reader, sessions, _ = reading
    await until(lambda: all(s.told_nothing for s in sessions.values()), "first round")
    await until(lambda: bool(waits), "a wait")
    assert waits[-1] == 10
    shrinking = sessions[ENDPOINTS[0]]
    shrinking.want, shrinking.once = 2, True
    reader.wants_less(shrinking)
    await until(lambda: waits[-1] == 2, "a wait asking for the new want")
    key = keys.endpoint_tasks(ENDPOINTS[0])
    ids = [await aredis.xadd(key, {"task_id": f"t{n}", "payload": "p"}) for n in range(5)]
    await until(lambda: len(shrinking.got) == 2, "the wanted entries")
    await asyncio.sleep(0.3)  # time for any surplus to have been read
    assert [e.entry_id for e in shrinking.got] == ids[:2]
    assert [entry_id for entry_id, _ in await aredis.xrange(key)] == ids
    pending = await aredis.xpending(key, stream.AGENT_GROUP)
    assert pending["pending"] == 2
