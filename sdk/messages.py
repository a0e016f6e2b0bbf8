"""The message shapes every component shares: Redis records, REST bodies, WebSocket frames.

Redis records (all values are strings; keys come from :mod:`sdk.keys`):

* **task stream entry** (``XADD`` by the web service, ``XREADGROUP`` by agents): the fields
  of :class:`StreamEntry`.
* **task hash**: the fields of :class:`TaskHash`, each stored under the one-character name
  :data:`TASK_HASH_NAMES` gives it (:func:`task_hash` reads a hash back into the long names,
  :func:`hash_script` writes them into Lua). ``started_at`` / ``completed_at`` are Unix
  seconds as decimal strings (:func:`hash_seconds` reads them); the creation time is not
  stored, a task id being a UUIDv7 that carries it (:func:`task_created_at`). ``result`` is
  a serialized buffer (:mod:`sdk.serialize`); ``exception`` is an :class:`ExceptionRecord`
  as JSON.
* **completion notice** (task-group results stream): ``task_id`` and ``state``.

A task hash may carry ``stdout`` and ``stderr``: what the function printed, bounded by the
agent, absent when empty. They travel in :class:`TaskInfo` and :class:`ResultItem` too.

REST bodies are JSON; :class:`TaskInfo` is what ``GET /v1/tasks/{id}`` returns.

WebSocket frames are JSON text frames, see :class:`SubscribeFrame` and :class:`ResultsFrame`.
Pure helpers here turn an exception into an :class:`ExceptionRecord` (agent side) and a
record back into an exception (SDK side): :func:`remote_exception` rebuilds the remote
exception as its own type when its ``pickled`` form loads on the client, with the remote
traceback attached as a note and as ``remote_traceback``; otherwise it is a
:class:`~sdk.errors.TaskFailed` naming the type.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from string import Template
from types import MappingProxyType
from typing import Any, Final, Literal, NotRequired, TypedDict, cast

from sdk.errors import TaskFailed
from sdk.serialize import DILL_DATA, deserialize, serialize
from sdk.states import TaskState

PICKLED_EXCEPTION_CHARS_MAX = 1_000_000
"""An exception whose serialized form is longer than this travels without ``pickled``."""


class StreamEntry(TypedDict):
    """One queued task on an endpoint's stream.

    The task's function and task group are in its hash, not here: the start script returns
    them with the start (``service_common.tasks.stream``), so a queued task carries two ids
    fewer (about 85 bytes of Redis). Readers take them from the hash alone, even from an
    entry that names them: tasks queued by an earlier record layout are not read, so a
    platform's queues are drained before it is upgraded.

    ``walltime_s`` (decimal seconds) caps how long the task may run; the agent applies the
    tighter of it and its endpoint's own walltime. ``result_serializers`` (comma-separated
    strategy ids, from a Globus Compute submit) names how the result should be serialized,
    the first that works (:mod:`endpoint_agent.result_encoding`)."""

    task_id: str
    payload: str
    walltime_s: NotRequired[str]
    result_serializers: NotRequired[str]


class TaskHash(TypedDict, total=False):
    """The fields of a task's hash in Redis (its id is in the key, not in a field), by the
    names code uses; Redis holds them under :data:`TASK_HASH_NAMES`."""

    user_id: str
    endpoint_id: str
    function_id: str
    task_group_id: str
    state: str
    started_at: str
    completed_at: str
    attempts: str
    agent: str
    entry: str
    """The stream entry id the task was started from (a duplicate entry does not start it)."""
    result: str
    exception: str
    stdout: str
    stderr: str
    notice_pending: str


TASK_HASH_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "user_id": "u", "endpoint_id": "e", "function_id": "f", "task_group_id": "g",
        "state": "s", "started_at": "b", "completed_at": "d", "attempts": "n", "agent": "a",
        "entry": "i", "result": "r", "exception": "x", "stdout": "1", "stderr": "2",
        "notice_pending": "p",
    }
)  # fmt: skip
"""The name each :class:`TaskHash` field has in Redis. Every queued task's hash carries five
of them: with names of one character its listpack fits the allocator's 192-byte class
instead of the 256-byte one (64 bytes of Redis less per queued task)."""

_TASK_HASH_FIELDS: Final = {short: name for name, short in TASK_HASH_NAMES.items()}


def stored(*names: str) -> list[str]:
    """The Redis names of :class:`TaskHash` fields (``KeyError`` for a name it has not)."""
    return [TASK_HASH_NAMES[name] for name in names]


def hash_field(name: str) -> str:
    """The Redis name of one :class:`TaskHash` field."""
    return TASK_HASH_NAMES[name]


def stored_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """``fields`` (by :class:`TaskHash`'s names) as Redis names them, to write."""
    return {TASK_HASH_NAMES[name]: value for name, value in fields.items()}


def hash_fields(raw: Mapping[str, str]) -> dict[str, str]:
    """A task hash as Redis returns it (``HGETALL``), by :class:`TaskHash`'s names; fields
    that are not the task's are left out."""
    return {_TASK_HASH_FIELDS[k]: v for k, v in raw.items() if k in _TASK_HASH_FIELDS}


def task_hash(raw: Mapping[str, str]) -> TaskHash:
    """:func:`hash_fields`, typed as the record."""
    return cast(TaskHash, hash_fields(raw))


def hash_script(source: str) -> str:
    """Lua ``source`` with each ``$name`` of a :class:`TaskHash` field replaced by its Redis
    name, so scripts read as the record does (``'$state'`` becomes ``'s'``)."""
    return Template(source).substitute(TASK_HASH_NAMES)


class ExceptionRecord(TypedDict):
    """Why a task failed: the exception's type, message and remote traceback.

    ``pickled`` is the exception itself, serialized with ``sdk.serialize.serialize``
    (strategy ``00``) when that succeeded; the SDK rebuilds the exception from it if it can."""

    type: str
    module: str
    message: str
    traceback: str
    pickled: NotRequired[str]


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
    stdout: NotRequired[str]
    stderr: NotRequired[str]


class TaskSpec(TypedDict):
    """One task in a batch submit body.

    ``walltime_s`` caps how long the task may run, in seconds (a positive finite number, at
    most the service's maximum); the web service writes it on the task's stream entry."""

    function_id: str
    payload: str
    walltime_s: NotRequired[float]


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
    stdout: NotRequired[str]
    stderr: NotRequired[str]


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
    """Describe ``exc`` (with its traceback) for the task hash.

    ``pickled`` is added when the exception serializes (and is not huge); an exception that
    does not pickle is still described by type, message and traceback."""
    record: ExceptionRecord = {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    try:
        pickled = serialize(exc, DILL_DATA)
    except Exception:
        return record
    if len(pickled) <= PICKLED_EXCEPTION_CHARS_MAX:
        record["pickled"] = pickled
    return record


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


def remote_exception(task_id: str, state: str, record: ExceptionRecord | None) -> Exception:
    """The exception the SDK raises for a failed or cancelled task.

    A failed task whose record carries ``pickled`` that loads into an :class:`Exception` is
    raised as that exception, so ``except ValueError`` catches a remote ``ValueError``; it is
    also a :class:`~sdk.errors.TaskFailed` (``except TaskFailed`` catches every remote
    failure), with ``task_id``, ``type_name``, ``message`` and ``remote_traceback``; the
    remote traceback is attached as a note too (shown under the local traceback). Anything
    else (no ``pickled``, a type the client cannot import, a ``BaseException`` such as
    ``SystemExit`` that must not end the caller, a cancelled task) is :func:`task_failed`'s
    plain :class:`~sdk.errors.TaskFailed`."""
    if state != TaskState.FAILED or record is None or not record.get("pickled"):
        return task_failed(task_id, state, record)
    try:
        exc: Any = deserialize(record["pickled"], allowed=(DILL_DATA.identifier,))
    except Exception:
        return task_failed(task_id, state, record)
    if not isinstance(exc, Exception) or isinstance(exc, StopIteration | StopAsyncIteration):
        return task_failed(task_id, state, record)
    dual = _as_task_failed(exc, task_id, state, record)
    if dual is None:
        return task_failed(task_id, state, record)
    if record["traceback"]:
        dual.add_note(f"\nRemote traceback of task {task_id}:\n{record['traceback'].rstrip()}")
    return dual


_DUAL_TYPES: dict[type[Exception], type[Exception]] = {}


def _reduce_as_cause(self: BaseException) -> tuple[Any, ...]:
    """Pickle a dual exception as its remote type: the dual class exists only in this process."""
    cause_type = type(self).__mro__[1]
    return (cause_type, self.args, dict(self.__dict__))


def _dual_type(cause: type[Exception]) -> type[Exception] | None:
    """A class deriving from both ``cause`` and :class:`TaskFailed` (made once per type)."""
    dual = _DUAL_TYPES.get(cause)
    if dual is None:
        namespace = {
            "__module__": cause.__module__,
            "__qualname__": cause.__qualname__,
            "__str__": cause.__str__,
            "__repr__": cause.__repr__,
            "__reduce__": _reduce_as_cause,
        }
        try:
            dual = type(cause.__name__, (cause, TaskFailed), namespace)
        except TypeError:  # an incompatible layout: stay with the remote type alone
            return None
        _DUAL_TYPES[cause] = dual
    return dual


def _as_task_failed(
    exc: Exception, task_id: str, state: str, record: ExceptionRecord
) -> Exception | None:
    """``exc`` re-made as an instance of its own type *and* :class:`TaskFailed`, so both
    ``except ValueError`` and ``except TaskFailed`` catch a remote ``ValueError`` (Ray's
    ``as_instanceof_cause`` does the same), carrying the TaskFailed attributes."""
    dual_type = _dual_type(type(exc)) if not isinstance(exc, TaskFailed) else type(exc)
    if dual_type is None:
        return None
    try:
        dual: Any = type(exc).__new__(dual_type, *exc.args)
        dual.__dict__.update(getattr(exc, "__dict__", {}))
        dual.args = exc.args
        dual.task_id = task_id
        dual.type_name = record["type"]
        dual.message = record["message"]
        dual.remote_traceback = record["traceback"]
        dual.state = state
    except (TypeError, AttributeError):
        return None
    result: Exception = dual
    return result


def parse_exception(raw: str | None) -> ExceptionRecord | None:
    """Parse the ``exception`` field of a task hash (``pickled`` is kept when present)."""
    if not raw:
        return None
    data: Any = json.loads(raw)
    return exception_from(data)


def exception_from(data: Any) -> ExceptionRecord:
    """An :class:`ExceptionRecord` from its decoded JSON (missing text fields are empty)."""
    if not isinstance(data, dict):
        data = {}
    record: ExceptionRecord = {
        "type": str(data.get("type", "")),
        "module": str(data.get("module", "")),
        "message": str(data.get("message", "")),
        "traceback": str(data.get("traceback", "")),
    }
    if isinstance(data.get("pickled"), str) and data["pickled"]:
        record["pickled"] = data["pickled"]
    return record


def hash_seconds(raw: str | None) -> float | None:
    """Unix seconds from a task hash's time field (decimal seconds); ``None`` when absent or
    unreadable."""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def task_created_at(task_id: str) -> float | None:
    """When the task was created, in Unix seconds, read from its id: a UUIDv7 (RFC 9562)
    whose 48 first bits count milliseconds and whose 12 bits after the version count
    4,096ths of the millisecond (the RFC's method 3; ``web_service.taskstore.tasks``
    makes them). ``None`` for an id of another version."""
    if len(task_id) != 36 or task_id[14] != "7":
        return None
    try:
        ms = int(task_id[:8] + task_id[9:13], 16)
        fraction = int(task_id[15:18], 16)
    except ValueError:
        return None
    return (ms + fraction / 4096) / 1000


def task_info(task_id: str, fields: TaskHash) -> TaskInfo:
    """Build the REST view of task ``task_id`` from its hash (as :func:`task_hash` reads
    it)."""
    info: TaskInfo = {
        "task_id": task_id,
        "state": fields.get("state", ""),
        "endpoint_id": fields.get("endpoint_id", ""),
        "function_id": fields.get("function_id", ""),
        "task_group_id": fields.get("task_group_id", ""),
        "created_at": task_created_at(task_id),
        "started_at": hash_seconds(fields.get("started_at")),
        "completed_at": hash_seconds(fields.get("completed_at")),
    }
    if fields.get("result"):
        info["result"] = fields["result"]
    record = parse_exception(fields.get("exception"))
    if record is not None:
        info["exception"] = record
    if fields.get("stdout"):
        info["stdout"] = fields["stdout"]
    if fields.get("stderr"):
        info["stderr"] = fields["stderr"]
    return info
