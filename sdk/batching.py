"""``SubmitQueue``: submissions made close together leave as few batch requests.

Adaptive batching: the first submission leaves at once; a lone submission never waits for
a timer. Batches **grow under backlog**: a request takes at most the current size (1 when
the queue starts) of the tasks waiting for one endpoint, where the size is first raised to
the waiting tasks' share of the ``max_in_flight`` request slots, and doubles whenever tasks
are still waiting after a pick; it is capped at ``batch_size`` and starts again at 1 once
the queue is idle (nothing waiting, nothing in flight). So submissions trickling in ramp up
1, 2, 4, ... while a burst of 10,000 ``Executor.submit`` calls costs about
``10,000 / batch_size`` requests, not one per task. A batch also stops short once its
payloads pass ``max_batch_bytes`` (one task always goes), so large arguments do not make a
body the service refuses.

**Requests in flight.** At most ``max_in_flight`` at once. The default is 1 because the
service appends each request's ids to the task group's list in the order requests
*arrive*: with more than one in flight, batches can overtake each other and the group (and
so ``Executor.reload_tasks``) would no longer list tasks in submission order. One in
flight still overlaps the client's work (serializing the next batch) with the service's;
a caller that needs no order in the group may raise it.

With ``batch_interval_s`` the queue also waits that long before sending a batch that is
not full (but never before the first) so that more tasks can gather. Endpoints take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sdk._base import TaskOutcome
from sdk.messages import TaskSpec


@dataclass(slots=True, eq=False)
class Submission:
    """One queued task and the future its outcome goes to.

    ``picked`` turns true when the task is taken into a request (from then on it may run);
    ``task_id`` is set once that request is answered; ``outcome`` when the task ended."""

    spec: TaskSpec
    future: asyncio.Future[Any]
    picked: bool = False
    task_id: str | None = None
    outcome: TaskOutcome | None = None
    _sent: asyncio.Future[None] | None = None  # made only when someone waits for the send

    def _mark_sent(self, _: object = None) -> None:
        if self._sent is not None and not self._sent.done():
            self._sent.set_result(None)

    def withdraw(self) -> bool:
        """Cancel it if it has not been taken into a request yet: then it never runs."""
        if self.picked or self.future.done():
            return False
        self.future.cancel()
        return True


Send = Callable[[str, list[Submission]], Awaitable[None]]
"""Submits one batch to one endpoint and arranges for each future to be resolved."""


class SubmitQueue:
    """Coalesces queued submissions into batch requests made by ``send``.

    If ``send`` raises, every future of that batch gets the error; later batches are still
    sent. A future cancelled while queued is left out of the request."""

    def __init__(
        self,
        send: Send,
        *,
        batch_size: int = 1000,
        batch_interval_s: float = 0.0,
        max_in_flight: int = 1,
        max_batch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if batch_interval_s < 0:
            raise ValueError(f"batch_interval_s must be >= 0, not {batch_interval_s}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s
        self.max_in_flight = max_in_flight
        self.max_batch_bytes = max_batch_bytes
        self.requests = 0
        """Batch requests sent so far."""
        self.most_in_flight = 0
        """The most requests that were in flight at once, for tests and the profile."""
        self._send = send
        self._pending: dict[str, deque[Submission]] = {}
        self._size = 1
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._full = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def put(self, endpoint_id: str, spec: TaskSpec) -> Submission:
        """Queue one task for ``endpoint_id``; the submission's future gets its outcome."""
        loop = asyncio.get_running_loop()
        submission = Submission(spec, loop.create_future())
        queue = self._pending.setdefault(endpoint_id, deque())
        queue.append(submission)
        if len(queue) >= self._size:
            self._full.set()
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="fxbroker-submit")
        return submission

    def _next_batch(self) -> tuple[str, list[Submission]] | None:
        while self._pending:
            endpoint_id = next(iter(self._pending))
            queue = self._pending.pop(endpoint_id)
            # Enough to share what waits among the request slots, never less than before.
            share = -(-len(queue) // self.max_in_flight)
            self._size = min(self.batch_size, max(self._size, share))
            batch: list[Submission] = []
            size = 0
            while queue and len(batch) < self._size:
                item = queue[0]
                if not item.future.done():
                    size += len(item.spec["payload"])
                    if batch and size > self.max_batch_bytes:
                        break  # the body stays well under the service's limit
                    item.picked = True
                    batch.append(item)
                queue.popleft()
            if queue:
                self._pending[endpoint_id] = queue  # back of the line: endpoints take turns
            if self.batch_interval_s > 0:
                self._size = self.batch_size  # the caller chose to wait for full batches
            elif self._pending:  # a backlog still waits: grow
                self._size = min(self.batch_size, self._size * 2)
            if batch:
                return endpoint_id, batch
        return None

    async def _drain(self) -> None:
        """Send batches while tasks wait, at most :attr:`max_in_flight` at once; returns
        when nothing waits and nothing is in flight."""
        first = True
        while True:
            if len(self._in_flight) < self.max_in_flight and self._pending:
                if not first:
                    await self._gather()
                picked = self._next_batch()
                if picked is not None:
                    first = False
                    self._start(*picked)
                continue
            if not self._in_flight and not self._pending:
                self._size = 1  # idle: the next burst ramps up again
                return
            self._kick.clear()
            await self._kick.wait()

    def _start(self, endpoint_id: str, batch: list[Submission]) -> None:
        self.requests += 1
        task = asyncio.get_running_loop().create_task(self._send_one(endpoint_id, batch))
        self._in_flight.add(task)
        self.most_in_flight = max(self.most_in_flight, len(self._in_flight))

    async def _send_one(self, endpoint_id: str, batch: list[Submission]) -> None:
        try:
            await self._send(endpoint_id, batch)
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._kick.set()
            for item in batch:
                item._mark_sent()

    async def _gather(self) -> None:
        """Wait ``batch_interval_s`` for more tasks, unless a full batch is already waiting."""
        self._full.clear()
        if self.batch_interval_s <= 0 or not self._pending:
            return
        if any(len(q) >= self._size for q in self._pending.values()):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.batch_interval_s)

    async def wait_sent(self, submission: Submission) -> str | None:
        """Wait until the request carrying ``submission`` was answered; its task id, or None
        if it never left (withdrawn) or its request failed. Waking a waiter costs O(1): no
        condition shared by every waiting submission."""
        if submission.task_id is None and not submission.future.done():
            if submission._sent is None:
                submission._sent = asyncio.get_running_loop().create_future()
                submission.future.add_done_callback(submission._mark_sent)
            await asyncio.shield(submission._sent)
        return submission.task_id

    async def aclose(self) -> None:
        """Stop sending; queued and in-flight submissions are cancelled."""
        tasks = [t for t in (self._task, *self._in_flight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending, self._pending = self._pending, {}
        for queue in pending.values():
            for item in queue:
                item.future.cancel()
