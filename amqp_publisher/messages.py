"""A task's outcome as the message the Globus Compute SDK's result watcher consumes: pure
functions, no I/O.

The body is a ``globus_compute_common`` messagepack v1 ``Result``: the byte ``\\x01`` and
``{"message_type": "result", "data": {"task_id", "data", "details", "error_details",
"task_statuses"}}``, no other field (that SDK logs a warning for each unknown one). On
success ``data`` is the serialized result, as fxbroker stores it (both speak the same
serialization) and ``error_details`` is null; on failure ``data`` is the remote traceback
as text and ``error_details`` is ``{"code", "user_message"}``, which that SDK turns into
``TaskExecutionFailed(data)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sdk.messages import parse_exception
from sdk.states import TaskState

VERSION_BYTE = b"\x01"

OUTCOME_FIELDS = ("state", "result", "exception")
"""The task-hash fields a message is made from (a notice that carries them inline suffices)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one message says: the task, its terminal state, its result or failure record."""

    task_id: str
    state: str
    result: str = ""
    exception: str = ""
    """The task hash's ``exception`` field: an ``ExceptionRecord`` as JSON ("" if none)."""


def outcome_of(task_id: str, fields: dict[str, str]) -> Outcome:
    """The outcome in a notice or task hash (``fields``; empty when the hash expired)."""
    return Outcome(
        task_id=task_id,
        state=fields.get("state", ""),
        result=fields.get("result", ""),
        exception=fields.get("exception", ""),
    )


def _failure(outcome: Outcome) -> tuple[str, str, str]:
    """``(traceback text, code, user message)`` of an outcome that is not a success."""
    if outcome.state == TaskState.CANCELLED:
        return (
            "TaskCancelled: the task was cancelled before it finished",
            "TaskCancelled",
            "The task was cancelled",
        )
    if not outcome.state:
        return (
            "ResultUnavailable: the task's outcome expired before it could be published",
            "ResultUnavailable",
            "The task's outcome is no longer stored",
        )
    record = parse_exception(outcome.exception)
    if record is None:
        return "UnknownError: the task failed without a reason", "UnknownError", "Task failed"
    text = record["traceback"] or f"{record['type']}: {record['message']}"
    return text, "RemoteExecutionError", "Task raised an exception"


def result_body(outcome: Outcome) -> bytes:
    """The message body for ``outcome`` (see the module docstring)."""
    data: dict[str, Any] = {"task_id": outcome.task_id, "details": None, "task_statuses": None}
    if outcome.state == TaskState.SUCCESS:
        data["data"] = outcome.result
        data["error_details"] = None
    else:
        text, code, user_message = _failure(outcome)
        data["data"] = text
        data["error_details"] = {"code": code, "user_message": user_message}
    envelope = {"message_type": "result", "data": data}
    return VERSION_BYTE + json.dumps(envelope, separators=(",", ":")).encode()
