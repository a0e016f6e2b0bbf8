"""``TaskHandle``: one task submitted by :class:`~sdk.asyncio_client.AsyncClient`, awaitable.

::

    handles = [ac.submit(i, function_id=fid) for i in range(100)]
    async for handle in ac.as_completed(handles):
        print(handle.task_id, handle.result(), handle.stdout)

A handle is made at once, before its task leaves (the submit queue batches it with others);
``task_id`` is set when the service has accepted it. ``await handle`` returns the task's value
or raises its remote exception (rebuilt as its own type when it can be, else
:class:`~sdk.errors.TaskFailed`). ``stdout`` / ``stderr`` hold what the function printed,
once it has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterable
from typing import Any

from sdk._base import TaskOutcome
from sdk.batching import Submission


class TaskHandle:
    """An awaitable task of an :class:`~sdk.asyncio_client.AsyncClient`."""

    __slots__ = ("_submission",)

    def __init__(self, submission: Submission) -> None:
        self._submission = submission

    @property
    def task_id(self) -> str | None:
        """The task's id, once the submit request that carried it was answered."""
        return self._submission.task_id

    @property
    def outcome(self) -> TaskOutcome | None:
        """How the task ended, once it has."""
        return self._submission.outcome

    @property
    def stdout(self) -> str:
        """What the function printed to stdout ("" until it finished, or if nothing)."""
        outcome = self._submission.outcome
        return outcome.stdout if outcome is not None else ""

    @property
    def stderr(self) -> str:
        """What the function printed to stderr ("" until it finished, or if nothing)."""
        outcome = self._submission.outcome
        return outcome.stderr if outcome is not None else ""

    @property
    def submission(self) -> Submission:
        """Where the handle's task stands in the submit queue."""
        return self._submission

    @property
    def future(self) -> asyncio.Future[Any]:
        """The asyncio future of the task's value."""
        return self._submission.future

    def done(self) -> bool:
        return self._submission.future.done()

    def result(self) -> Any:
        """The value now; raises like ``await handle`` (``InvalidStateError`` if not done)."""
        return self._submission.future.result()

    def exception(self) -> BaseException | None:
        return self._submission.future.exception()

    def withdraw(self) -> bool:
        """Take the task out of the submit queue if it has not left yet; True if it did (then it
        never runs and awaiting it raises ``CancelledError``). To cancel a task that has left,
        use :meth:`AsyncClient.cancel <sdk.asyncio_client.AsyncClient.cancel>`."""
        return self._submission.withdraw()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._submission.future.__await__()

    def __repr__(self) -> str:
        if not self.done():
            state = "pending" if self.task_id is None else "submitted"
        elif self._submission.future.cancelled():
            state = "withdrawn"
        else:
            state = "failed" if self.exception() is not None else "done"
        return f"<TaskHandle {self.task_id or '(not sent)'} {state}>"


async def as_completed(
    handles: Iterable[TaskHandle], *, timeout_s: float | None = None
) -> AsyncIterator[TaskHandle]:
    """Yield each handle as its task finishes (first finished first).

    Raises :class:`TimeoutError` when ``timeout_s`` passes with handles still unfinished."""
    pending: dict[asyncio.Future[Any], TaskHandle] = {h.future: h for h in handles}
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise TimeoutError(f"{len(pending)} tasks did not finish within {timeout_s} s")
        for future in done:
            yield pending.pop(future)
