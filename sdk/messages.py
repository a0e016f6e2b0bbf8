"""The message shapes every component shares: Redis records, REST bodies, WebSocket frames.

Redis records (all values are strings; keys come from :mod:`sdk.keys`):

* **task stream entry** (``XADD`` by the web service, ``XREADGROUP`` by agents): the fields
  of :class:`StreamEntry`.
* **task hash**: the fields of :class:`TaskHash`. ``created_at`` / ``started_at`` /
  ``completed_at`` are Unix seconds as decimal strings; ``result`` is a serialized buffer
  (:mod:`sdk.serialize`); ``exception`` is an :class:`ExceptionRecord` as JSON.
* **completion notice** (task-group results stream): ``task_id`` and ``state``.

REST bodies are JSON; :class:`TaskInfo` is what ``GET /v1/tasks/{id}`` returns.

WebSocket frames are JSON text frames, see :class:`SubscribeFrame` and :class:`ResultsFrame`.
Pure helpers here turn an exception into an :class:`ExceptionRecord` (agent side) and a
record back into an exception (SDK side).
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Literal, NotRequired, TypedDict

from sdk.errors import TaskFailed
from sdk.states import TaskState


class StreamEntry(TypedDict):
    """One queued task on an endpoint's stream."""

    task_id: str
    function_id: str
    task_group_id: str
    payload: str


class TaskHash(TypedDict, total=False):
    """The fields of a task's hash in Redis."""

    task_id: str
    user_id: str
    endpoint_id: str
    function_id: str
    task_group_id: str
    state: str
    created_at: str
    started_at: str
    completed_at: str
    attempts: str
    agent: str
    result: str
    exception: str


class ExceptionRecord(TypedDict):
    """Why a task failed: the exception's type, message and remote traceback."""

    type: str
    module: str
    message: str
    traceback: str


class TaskInfo(TypedDict):
    """A task as the REST API reports it."""

    task_id: str
    state: str
    endpoint_id: str
    function_id: str
    task_group_id: str
    created_at: float | None
    started_at: float | None
    completed_at: float | None
    result: NotRequired[str]
    exception: NotRequired[ExceptionRecord]


class TaskSpec(TypedDict):
    """One task in a batch submit body."""

    function_id: str
    payload: str


class SubmitRequest(TypedDict):
    """``POST /v1/endpoints/{endpoint_id}/submit``."""

    tasks: list[TaskSpec]
    task_group_id: NotRequired[str | None]


class SubmitResponse(TypedDict):
    task_group_id: str
    task_ids: list[str]


class CancelNotice(TypedDict):
    """Web service -> agents, published as JSON on ``keys.endpoint_cancel(endpoint_id)``:
    interrupt this task if you are running it (it was ``running`` when its owner cancelled it).

    Pub/sub is fire-and-forget: an agent that is not subscribed at that moment misses it."""

    task_id: str


class SubscribeFrame(TypedDict):
    """Client -> ws_service: send every completion of a task group after ``cursor``.

    ``cursor`` is a stream id; ``"0"`` replays the group from its start."""

    type: Literal["subscribe"]
    task_group_id: str
    cursor: str


class ResultItem(TypedDict):
    """One completed task inside a :class:`ResultsFrame`."""

    task_id: str
    state: str
    cursor: str
    result: NotRequired[str]
    exception: NotRequired[ExceptionRecord]


class ResultsFrame(TypedDict):
    """ws_service -> client: results of one task group, in completion order.

    ``cursor`` is the cursor of the last item; resubscribing from it misses nothing."""

    type: Literal["results"]
    task_group_id: str
    cursor: str
    results: list[ResultItem]


class SubscribedFrame(TypedDict):
    """ws_service -> client: the subscription to a task group is live from ``cursor``."""

    type: Literal["subscribed"]
    task_group_id: str
    cursor: str


class UnsubscribeFrame(TypedDict):
    """Client -> ws_service: stop sending results of a task group."""

    type: Literal["unsubscribe"]
    task_group_id: str


class ErrorFrame(TypedDict):
    """ws_service -> client: a frame was refused; the connection stays open.

    ``task_group_id`` is set when the error ends (or refuses) that group's subscription."""

    type: Literal["error"]
    code: str
    message: str
    task_group_id: NotRequired[str]


def exception_record(exc: BaseException) -> ExceptionRecord:
    """Describe ``exc`` (with its traceback) for the task hash."""
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def error_record(type_name: str, message: str, *, module: str = "fxbroker") -> ExceptionRecord:
    """Describe a failure that has no Python exception behind it (a lost worker, say)."""
    return {"type": type_name, "module": module, "message": message, "traceback": ""}


def task_failed(task_id: str, state: str, record: ExceptionRecord | None) -> TaskFailed:
    """The :class:`TaskFailed` the SDK raises for a failed or cancelled task."""
    if state == TaskState.CANCELLED:
        return TaskFailed(task_id, "TaskCancelled", "the task was cancelled", "", state)
    if record is None:
        return TaskFailed(task_id, "UnknownError", "the task failed without a reason", "", state)
    return TaskFailed(task_id, record["type"], record["message"], record["traceback"], state)


def parse_exception(raw: str | None) -> ExceptionRecord | None:
    """Parse the ``exception`` field of a task hash."""
    if not raw:
        return None
    data: Any = json.loads(raw)
    return {
        "type": str(data.get("type", "")),
        "module": str(data.get("module", "")),
        "message": str(data.get("message", "")),
        "traceback": str(data.get("traceback", "")),
    }


def _opt_float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def task_info(fields: dict[str, str]) -> TaskInfo:
    """Build the REST view of a task from its Redis hash."""
    info: TaskInfo = {
        "task_id": fields.get("task_id", ""),
        "state": fields.get("state", ""),
        "endpoint_id": fields.get("endpoint_id", ""),
        "function_id": fields.get("function_id", ""),
        "task_group_id": fields.get("task_group_id", ""),
        "created_at": _opt_float(fields.get("created_at")),
        "started_at": _opt_float(fields.get("started_at")),
        "completed_at": _opt_float(fields.get("completed_at")),
    }
    if fields.get("result"):
        info["result"] = fields["result"]
    record = parse_exception(fields.get("exception"))
    if record is not None:
        info["exception"] = record
    return info
