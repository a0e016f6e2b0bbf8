"""SubmitQueue: the first submission leaves at once; under backlog batches double up to the
cap, with a bounded number of requests in flight."""

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


async def test_a_backlog_grows_the_batches_up_to_the_cap() -> None:
    send = Recorder()
    queue = SubmitQueue(send, batch_size=3)
    first = queue.put("e", spec(0)).future
    await send.sent.wait()
    assert send.batches == [("e", ["0"])]  # the first left alone, at once
    later = [queue.put("e", spec(n)).future for n in range(1, 6)]
    send.release.set()
    assert await asyncio.gather(first, *later) == [str(n) for n in range(6)]
    assert queue.requests == 3
    # One in flight (the default): the next batch takes the backlog, up to the cap.
    assert send.batches == [("e", ["0"]), ("e", ["1", "2", "3"]), ("e", ["4", "5"])]
    assert queue.most_in_flight == 1


async def test_a_backlog_is_shared_among_k_slots() -> None:
    send = Recorder()
    queue = SubmitQueue(send, batch_size=8, max_in_flight=2)
    futures = [queue.put("e", spec(n)).future for n in range(40)]
    for _ in range(100):  # let the queue fill every slot it may
        await asyncio.sleep(0)
    assert [len(b) for _, b in send.batches] == [8, 8]  # held: no more than two at once
    send.release.set()
    await asyncio.gather(*futures)
    assert [len(b) for _, b in send.batches] == [8] * 5
    assert queue.most_in_flight == 2


async def test_ten_thousand_tasks_cost_few_requests_and_at_most_k_in_flight() -> None:
    send = Recorder()
    queue = SubmitQueue(send, batch_size=1000, max_in_flight=3)
    futures = [queue.put("e", spec(n)).future for n in range(10_000)]
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(send.batches) == 3  # held: no more than max_in_flight requests at once
    send.release.set()
    await asyncio.gather(*futures)
    sizes = [len(batch) for _, batch in send.batches]
    assert sizes == [1000] * 10
    assert queue.requests == 10
    assert queue.most_in_flight == 3


async def test_endpoints_take_turns_and_never_mix() -> None:
    send = Recorder()
    send.release.set()
    queue = SubmitQueue(send, batch_size=2)
    futures = [queue.put(ep, spec(n)).future for n, ep in enumerate("aabab")]
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
    bad, good = queue.put("bad", spec(0)).future, queue.put("good", spec(1)).future
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
    dropped.future.cancel()
    assert not first.withdraw()  # in flight: it may run
    assert kept.withdraw() and not kept.withdraw()  # queued: it never leaves
    send.release.set()
    assert await first.future == "0"
    assert send.batches == [("e", ["0"])]
    assert kept.future.cancelled() and dropped.future.cancelled()


async def test_aclose_cancels_what_is_queued_and_in_flight() -> None:
    send = Recorder()
    queue = SubmitQueue(send)
    in_flight = queue.put("e", spec(0)).future
    await send.sent.wait()
    queued = queue.put("e", spec(1)).future
    await queue.aclose()
    assert in_flight.cancelled() and queued.cancelled()
    assert len(queue) == 0


async def test_batch_interval_waits_for_more_but_a_full_batch_leaves_at_once() -> None:
    send = Recorder()
    send.release.set()
    queue = SubmitQueue(send, batch_size=3, batch_interval_s=3600.0)
    first = queue.put("e", spec(0))
    await first.future  # the first never waits for the interval
    more = [queue.put("e", spec(n)).future for n in range(1, 4)]  # a full batch
    await asyncio.gather(*more)  # leaves without waiting out the hour
    assert send.batches == [("e", ["0"]), ("e", ["1", "2", "3"])]


async def test_wait_sent_returns_once_the_request_is_answered() -> None:
    send = Recorder()

    async def send_and_name(endpoint_id: str, batch: list[Submission]) -> None:
        await send(endpoint_id, batch)
        for n, s in enumerate(batch):
            s.task_id = f"task-{n}"

    queue = SubmitQueue(send_and_name)
    submission = queue.put("e", spec(0))
    await send.sent.wait()
    waiter = asyncio.create_task(queue.wait_sent(submission))
    await asyncio.sleep(0)  # let the waiter start waiting
    assert not waiter.done()
    send.release.set()
    assert await waiter == "task-0"


def test_batch_size_and_interval_must_be_valid() -> None:
    async def send(endpoint_id: str, batch: list[Submission]) -> None: ...

    with pytest.raises(ValueError):
        SubmitQueue(send, batch_size=0)
    with pytest.raises(ValueError):
        SubmitQueue(send, batch_interval_s=-1.0)
    with pytest.raises(ValueError):
        SubmitQueue(send, max_in_flight=0)


async def test_a_batch_stops_short_of_its_byte_budget() -> None:
    send = Recorder()
    send.release.set()
    queue = SubmitQueue(send, batch_size=100, max_batch_bytes=2500)
    big: list[TaskSpec] = [{"function_id": "f", "payload": str(n) * 1000} for n in range(1, 6)]
    futures = [queue.put("e", s).future for s in big]
    await asyncio.gather(*futures)
    assert [len(b) for _, b in send.batches] == [2, 2, 1]


async def test_a_trickle_ramps_up_one_two_four() -> None:
    sizes: list[int] = []
    queue: SubmitQueue

    async def send(endpoint_id: str, batch: list[Submission]) -> None:
        sizes.append(len(batch))
        for s in batch:
            s.future.set_result(None)
        # While this request is in flight, two more tasks arrive for each one sent.
        if sum(sizes) < 30:
            for n in range(2 * len(batch)):
                queue.put("e", spec(n))

    queue = SubmitQueue(send, batch_size=8)
    await queue.put("e", spec(0)).future
    for _ in range(200):
        await asyncio.sleep(0)
    assert sizes[:4] == [1, 2, 4, 8] and max(sizes) == 8
