"""SubmitQueue: the first submission leaves at once, later ones join the next request."""

from __future__ import annotations

import asyncio

import pytest

from sdk.batching import Submission, SubmitQueue
from sdk.messages import TaskSpec


def spec(n: int) -> TaskSpec:
    return {"function_id": "f", "payload": str(n)}


class Recorder:
    """A ``send`` that records each batch and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()
        self.sent = asyncio.Event()

    async def __call__(self, endpoint_id: str, batch: list[Submission]) -> None:
        self.batches.append((endpoint_id, [s.spec["payload"] for s in batch]))
        self.sent.set()
        await self.release.wait()
        for s in batch:
            s.future.set_result(s.spec["payload"])


async def test_queued_while_in_flight_join_the_next_request() -> None:
    send = Recorder()
    queue = SubmitQueue(send, batch_size=3)
    first = queue.put("e", spec(0))
    await send.sent.wait()
    assert send.batches == [("e", ["0"])]  # the first left alone, at once
    later = [queue.put("e", spec(n)) for n in range(1, 6)]
    send.release.set()
    assert await asyncio.gather(first, *later) == [str(n) for n in range(6)]
    assert send.batches == [("e", ["0"]), ("e", ["1", "2", "3"]), ("e", ["4", "5"])]


async def test_endpoints_take_turns_and_never_mix() -> None:
    send = Recorder()
    send.release.set()
    queue = SubmitQueue(send, batch_size=2)
    futures = [queue.put(ep, spec(n)) for n, ep in enumerate("aabab")]
    await asyncio.gather(*futures)
    assert send.batches == [("a", ["0", "1"]), ("b", ["2", "4"]), ("a", ["3"])]


async def test_a_failed_request_fails_its_batch_only() -> None:
    calls: list[list[str]] = []

    async def send(endpoint_id: str, batch: list[Submission]) -> None:
        calls.append([s.spec["payload"] for s in batch])
        if endpoint_id == "bad":
            raise RuntimeError("refused")
        for s in batch:
            s.future.set_result(endpoint_id)

    queue = SubmitQueue(send)
    bad, good = queue.put("bad", spec(0)), queue.put("good", spec(1))
    assert await good == "good"
    with pytest.raises(RuntimeError, match="refused"):
        await bad
    assert calls == [["0"], ["1"]]


async def test_a_cancelled_submission_is_not_sent() -> None:
    send = Recorder()
    queue = SubmitQueue(send)
    first = queue.put("e", spec(0))
    await send.sent.wait()
    dropped, kept = queue.put("e", spec(1)), queue.put("e", spec(2))
    dropped.cancel()
    send.release.set()
    assert list(await asyncio.gather(first, kept)) == ["0", "2"]
    assert send.batches == [("e", ["0"]), ("e", ["2"])]


async def test_aclose_cancels_what_is_queued_and_in_flight() -> None:
    send = Recorder()
    queue = SubmitQueue(send)
    in_flight = queue.put("e", spec(0))
    await send.sent.wait()
    queued = queue.put("e", spec(1))
    await queue.aclose()
    assert in_flight.cancelled() and queued.cancelled()
    assert len(queue) == 0


def test_batch_size_must_be_positive() -> None:
    async def send(endpoint_id: str, batch: list[Submission]) -> None: ...

    with pytest.raises(ValueError):
        SubmitQueue(send, batch_size=0)
