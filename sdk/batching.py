"""``SubmitQueue``: submissions made close together leave as one batch request.

Adaptive batching: the first submission leaves at once. Those queued while a request is in
flight join the next request, up to ``batch_size`` tasks of one endpoint each, so a burst of
``asyncio.gather`` runs (or ``Executor.submit`` calls) costs a few requests, not one per task,
and a lone submission never waits for a timer. With ``batch_interval_s`` the queue also waits
that long after each request (unless ``batch_size`` tasks are already waiting) so that more
tasks can gather. One request is in flight at a time per queue; endpoints take turns.
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

    def __init__(self, send: Send, *, batch_size: int = 128, batch_interval_s: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if batch_interval_s < 0:
            raise ValueError(f"batch_interval_s must be >= 0, not {batch_interval_s}")
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s
        self.requests = 0
        """Batch requests sent so far."""
        self._send = send
        self._pending: dict[str, deque[Submission]] = {}
        self._task: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._answered = asyncio.Condition()

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def put(self, endpoint_id: str, spec: TaskSpec) -> Submission:
        """Queue one task for ``endpoint_id``; the submission's future gets its outcome."""
        loop = asyncio.get_running_loop()
        submission = Submission(spec, loop.create_future())
        queue = self._pending.setdefault(endpoint_id, deque())
        queue.append(submission)
        if len(queue) >= self.batch_size:
            self._full.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="fxbroker-submit")
        return submission

    def _next_batch(self) -> tuple[str, list[Submission]] | None:
        while self._pending:
            endpoint_id = next(iter(self._pending))
            queue = self._pending.pop(endpoint_id)
            batch: list[Submission] = []
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if not item.future.done():
                    item.picked = True
                    batch.append(item)
            if queue:
                self._pending[endpoint_id] = queue  # back of the line: endpoints take turns
            if batch:
                return endpoint_id, batch
        return None

    async def _drain(self) -> None:
        while (picked := self._next_batch()) is not None:
            endpoint_id, batch = picked
            self.requests += 1
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
            async with self._answered:
                self._answered.notify_all()
            await self._gather()

    async def _gather(self) -> None:
        """Wait ``batch_interval_s`` for more tasks, unless a full batch is already waiting."""
        self._full.clear()
        if self.batch_interval_s <= 0 or not self._pending:
            return
        if any(len(q) >= self.batch_size for q in self._pending.values()):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.batch_interval_s)

    async def wait_sent(self, submission: Submission) -> str | None:
        """Wait until the request carrying ``submission`` was answered; its task id, or None
        if it never left (withdrawn) or its request failed."""
        async with self._answered:
            await self._answered.wait_for(
                lambda: (
                    submission.task_id is not None
                    or submission.future.done()
                    or (self._task is None or self._task.done())
                )
            )
        return submission.task_id

    async def aclose(self) -> None:
        """Stop sending; queued and in-flight submissions are cancelled."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending, self._pending = self._pending, {}
        for queue in pending.values():
            for item in queue:
                item.future.cancel()
        async with self._answered:
            self._answered.notify_all()
