"""Task states, shared by every component and identical in Redis, JSON and SQL.

The vocabulary is funcX's, so Globus Compute clients understand it. Each transition is
written by exactly one component: the web service creates ``WAITING`` (and writes
``CANCELLED`` while a task is still queued), the endpoint agent writes ``RUNNING`` and
the terminal states.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """The life of one task: ``waiting-for-ep`` -> ``running`` -> a terminal state."""

    WAITING = "waiting-for-ep"
    """Accepted and queued on its endpoint's stream; no agent has started it."""
    RUNNING = "running"
    """An agent has taken it and is executing it."""
    SUCCESS = "success"
    """Finished; the task holds the serialized result."""
    FAILED = "failed"
    """The function raised, its worker died, or its payload was bad; the task holds why."""
    CANCELLED = "cancelled"
    """Cancelled by its owner before it finished; it will not run (again)."""

    @property
    def terminal(self) -> bool:
        """True for states a task never leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED})
