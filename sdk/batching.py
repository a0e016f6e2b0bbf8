"""``SubmitQueue``: submissions made close together leave as one batch request.

The first submission leaves at once. Those queued while a request is in flight join the next
request, up to ``batch_size`` tasks of one endpoint each, so a burst of ``asyncio.gather`` runs
(or ``Executor.submit`` calls) costs a few requests, not one per task, and a lone submission
never waits for a timer. One request is in flight at a time per queue; endpoints take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sdk.messages import TaskSpec


@dataclass(frozen=True, slots=True)
class Submission:
    """One queued task and the future its outcome goes to."""

    spec: TaskSpec
    future: asyncio.Future[Any]


Send = Callable[[str, list[Submission]], Awaitable[None]]
"""Submits one batch to one endpoint and arranges for each future to be resolved."""


class SubmitQueue:
    """Coalesces queued submissions into batch requests made by ``send``.

    If ``send`` raises, every future of that batch gets the error; later batches are still
    sent. A future cancelled while queued is left out of the request."""

    def __init__(self, send: Send, *, batch_size: int = 128) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.batch_size = batch_size
        self._send = send
        self._pending: dict[str, deque[Submission]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def put(self, endpoint_id: str, spec: TaskSpec) -> asyncio.Future[Any]:
        """Queue one task for ``endpoint_id``; the returned future gets its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.setdefault(endpoint_id, deque()).append(Submission(spec, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="fxbroker-submit")
        return future

    def _next_batch(self) -> tuple[str, list[Submission]] | None:
        while self._pending:
            endpoint_id = next(iter(self._pending))
            queue = self._pending.pop(endpoint_id)
            batch: list[Submission] = []
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if not item.future.done():
                    batch.append(item)
            if queue:
                self._pending[endpoint_id] = queue  # back of the line: endpoints take turns
            if batch:
                return endpoint_id, batch
        return None

    async def _drain(self) -> None:
        while (picked := self._next_batch()) is not None:
            endpoint_id, batch = picked
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
