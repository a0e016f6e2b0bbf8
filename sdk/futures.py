"""``TaskFuture``: the ``concurrent.futures.Future`` of one task run by an ``Executor``.

It is a real ``concurrent.futures.Future`` (``concurrent.futures.wait`` and
``as_completed`` work on it) with what a task adds:

* ``task_id``: set once the submit request that carried the task was answered;
* ``stdout`` / ``stderr``: what the function printed, once it finished;
* ``cancel()``: cancels the task *upstream*, and returns True only if the task will not run:
  it had not left the Executor yet, or the service still had it queued and cancelled it. A
  task already running is asked to stop, but ``cancel()`` answers False, as it does for a
  running future of any executor. A task cancelled by anyone upstream ends its future
  cancelled.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sdk._base import TaskOutcome
from sdk.errors import TaskFailed
from sdk.handles import TaskHandle
from sdk.states import TaskState

T = TypeVar("T")

Canceller = Callable[["TaskFuture[Any]"], bool]
"""Tries to cancel a future's task upstream; True if it will not run."""


class TaskFuture(concurrent.futures.Future[T]):
    """The future of one task; see the module docstring."""

    def __init__(self, canceller: Canceller | None = None) -> None:
        super().__init__()
        self._task_id: str | None = None
        self.outcome: TaskOutcome | None = None
        self.handle: TaskHandle | None = None
        """The task in the Executor's event loop, once it is queued there."""
        self._canceller = canceller
        self.phase_lock = threading.Lock()
        """Held while the future's task moves from the Executor into the submit queue."""

    @property
    def task_id(self) -> str | None:
        """The task's id, once the service accepted it."""
        if self._task_id is None and self.handle is not None:
            self._task_id = self.handle.task_id
        return self._task_id

    @task_id.setter
    def task_id(self, value: str | None) -> None:
        self._task_id = value

    @property
    def stdout(self) -> str:
        """What the function printed to stdout ("" until it finished, or if nothing)."""
        return self.outcome.stdout if self.outcome is not None else ""

    @property
    def stderr(self) -> str:
        """What the function printed to stderr ("" until it finished, or if nothing)."""
        return self.outcome.stderr if self.outcome is not None else ""

    def cancel(self) -> bool:
        """Cancel the task; True only if it will not run (see the module docstring)."""
        if self.cancelled():
            return True
        if self.done():
            return False
        if self._canceller is None:
            return self.cancel_locally()
        return self._canceller(self)

    def cancel_locally(self) -> bool:
        """Mark the future cancelled without asking the service (the task will not run, or
        nobody waits for it any more)."""
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        # What an executor does for a cancelled future: wakes concurrent.futures.wait() and
        # as_completed() callers (a cancel alone only wakes result() and runs callbacks).
        self.set_running_or_notify_cancel()
        return True

    def resolve(self, outcome: TaskOutcome) -> None:
        """Settle the future with the task's outcome; a cancelled task cancels the future.

        A future already settled (cancelled meanwhile) is left as it is."""
        self.outcome = outcome
        error = outcome.error
        if (
            outcome.state == TaskState.CANCELLED
            and isinstance(error, TaskFailed)
            and error.state == TaskState.CANCELLED
        ):
            self.cancel_locally()
            return
        try:
            if error is None:
                self.set_result(outcome.value)
            else:
                self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass

    def fail(self, error: BaseException) -> None:
        """Settle the future with an error that is not the task's (it never got to run)."""
        try:
            self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id or '(not sent)'} {self._state.lower()}>"
