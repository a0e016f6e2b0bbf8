"""Translation between fxbroker's records and the Globus Compute SDK's documents: pure
functions, no I/O, shared by :mod:`web_service.routes.compute_v2` and
:mod:`web_service.routes.compute_v3`.

Both speak the same serialization, so payloads and results pass through unchanged. What
differs: that SDK registers a function as a *packed* code buffer (``<length>\\n01\\n...``),
or as bare source with ``serialized: false`` (``register_source_code``), where fxbroker keeps
one unpacked buffer (``01\\n...`` or ``st\\n<name>:<source>``); it submits tasks keyed by
function id; and it reads a task as ``{"task_id", "status", "completion_t", "result" |
"exception"}``, where ``exception`` is the remote traceback as text and ``completion_t`` is
absent while the task is pending (its Executor takes a task without one as pending).

Parsers raise a 4xx :class:`~web_service.errors.ApiError` naming the offending field, as
:mod:`web_service.routes.bodies` does; fields they do not use are ignored.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Any

from sdk.errors import DeserializationError
from sdk.messages import SubmitResponse, TaskInfo, TaskSpec
from sdk.serialize import (
    DILL_CODE,
    DILL_DATA,
    IDENTIFIER_LENGTH,
    JSON_DATA,
    SOURCE_CODE,
    pack_buffers,
    strategy_of,
    unpack_buffers,
)
from sdk.states import TaskState
from web_service.errors import invalid, not_found
from web_service.routes.bodies import FunctionRegistration, json_object, name_field, text_field
from web_service.store.models import is_id

MIN_SDK_VERSION = "4.0.0"
"""The oldest Globus Compute SDK whose routes these are (4.x: ``/v3`` submit and register)."""
MIN_EP_VERSION = "4.0.0"
ALL_CODE_STRATEGIES = "12"
"""That SDK's ``AllCodeStrategies``: a packed list of the same function in several forms."""
SOURCE_DILL = "sd"
"""That SDK's ``PureSourceDill``: ``<name>:<source>``, the body of fxbroker's ``st``."""
RESULT_SERIALIZERS = {
    "globus_compute_sdk.serialize.DillDataBase64": DILL_DATA.identifier,
    "globus_compute_sdk.serialize.concretes.DillDataBase64": DILL_DATA.identifier,
    "globus_compute_sdk.serialize.JSONData": JSON_DATA.identifier,
    "globus_compute_sdk.serialize.concretes.JSONData": JSON_DATA.identifier,
}
"""The result serializers (import paths) fxbroker agents can use, and their strategy ids."""
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""The name of a function registered as bare source: an ASCII Python identifier."""
PENDING = frozenset({TaskState.WAITING.value, TaskState.RUNNING.value})


@dataclass(frozen=True, kw_only=True)
class ComputeSubmit:
    """A ``POST /v3/endpoints/{id}/submit`` body, flattened into fxbroker's task specs."""

    tasks: list[TaskSpec]
    counts: list[tuple[str, int]]
    """Each function id with its number of tasks, in the body's order."""
    task_group_id: str | None
    create_queue: bool
    result_strategies: list[str]


def _code_buffer(packed: str) -> str:
    """The one buffer fxbroker keeps for that SDK's ``function_code`` (a packed buffer)."""
    try:
        buffers = unpack_buffers(packed)
    except DeserializationError as exc:
        raise invalid(f"function_code must be a packed code buffer: {exc}") from exc
    if len(buffers) != 1:
        raise invalid(f"function_code must pack 1 buffer, not {len(buffers)}")
    buffer = buffers[0]
    if strategy_of(buffer) == ALL_CODE_STRATEGIES:
        try:
            candidates = unpack_buffers(buffer[IDENTIFIER_LENGTH:])
        except DeserializationError as exc:
            raise invalid(f"function_code holds a malformed combined buffer: {exc}") from exc
        runnable = {DILL_CODE.identifier, SOURCE_CODE.identifier, SOURCE_DILL}
        usable = [c for c in candidates if strategy_of(c) in runnable]
        if not usable:
            raise invalid("function_code combines no strategy fxbroker runs (01, st or sd)")
        source = [c for c in usable if strategy_of(c) != DILL_CODE.identifier]
        buffer = (source or usable)[0]  # source first, as that SDK's own order tries it
    if strategy_of(buffer) == SOURCE_DILL:
        buffer = f"{SOURCE_CODE.identifier}\n{buffer[IDENTIFIER_LENGTH:]}"
    if (
        strategy_of(buffer) not in {DILL_CODE.identifier, SOURCE_CODE.identifier}
        or buffer[IDENTIFIER_LENGTH - 1 : IDENTIFIER_LENGTH] != "\n"
    ):
        raise invalid(
            f"function_code uses strategy {strategy_of(buffer)!r}; fxbroker runs DillCode "
            "(01), PureSourceTextInspect (st), PureSourceDill (sd) and AllCodeStrategies (12)"
        )
    return buffer


def parse_registration(data: Any) -> FunctionRegistration:
    """``{"function_name", "function_code", "serialized"?, "description"?, ...}``.

    With ``serialized: false`` the code is bare source (``register_source_code``): it is
    kept as an ``st`` buffer of ``function_name``, which agents ``exec`` to find the name.
    """
    body = json_object(data)
    name = name_field(body, "function_name")
    code = text_field(body, "function_code")
    serialized = body.get("serialized", True)
    if not isinstance(serialized, bool):
        raise invalid("serialized must be true or false")
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or "\x00" in description):
        raise invalid("description must be a string without NUL characters, or null")
    if serialized:
        buffer = _code_buffer(code)
    else:
        if not re.fullmatch(IDENTIFIER, name):
            raise invalid("function_name must be the source's function name (an ASCII identifier)")
        buffer = f"{SOURCE_CODE.identifier}\n{name}:{textwrap.dedent(code)}"
    return FunctionRegistration(name=name, code=buffer, description=description or "")


def globus_function_code(code: str) -> str:
    """fxbroker's stored code as that SDK registers it: one packed buffer."""
    return pack_buffers([code])


def parse_submit(data: Any, *, max_tasks: int) -> ComputeSubmit:
    """``{"tasks": {function_id: [payload, ...]}, "task_group_id"?, "create_queue"?,
    "result_serializers"?}``: 1 to ``max_tasks`` tasks in all, each list holding at least one.

    A key that is not a uuid names no function: 404 ``FUNCTION_NOT_FOUND``, as an unknown id
    does in ``queue_batch`` (and in ``/v1``, where a task's ``function_id`` is any string)."""
    body = json_object(data)
    raw_tasks = body.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise invalid("tasks must be a non-empty object of function id -> list of payloads")
    tasks: list[TaskSpec] = []
    counts: list[tuple[str, int]] = []
    for function_id, payloads in raw_tasks.items():
        if not is_id(function_id):
            raise not_found("function", repr(function_id))
        if (
            not isinstance(payloads, list)
            or not payloads
            or not all(isinstance(p, str) for p in payloads)
        ):
            raise invalid(f"tasks[{function_id}] must be a non-empty list of payload strings")
        if len(tasks) + len(payloads) > max_tasks:
            raise invalid(f"a batch holds at most {max_tasks} tasks")
        tasks.extend({"function_id": function_id, "payload": p} for p in payloads)
        counts.append((function_id, len(payloads)))
    task_group_id = body.get("task_group_id")
    if task_group_id is not None and not (isinstance(task_group_id, str) and is_id(task_group_id)):
        raise invalid("task_group_id must be a uuid or null")
    create_queue = body.get("create_queue", False)
    if not isinstance(create_queue, bool):
        raise invalid("create_queue must be true or false")
    return ComputeSubmit(
        tasks=tasks,
        counts=counts,
        task_group_id=task_group_id,
        create_queue=create_queue,
        result_strategies=_result_strategies(body.get("result_serializers")),
    )


def _result_strategies(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise invalid("result_serializers must be a list of import paths")
    unknown = [path for path in raw if path not in RESULT_SERIALIZERS]
    if unknown:
        known = ", ".join(sorted(RESULT_SERIALIZERS))
        raise invalid(f"result_serializers: fxbroker knows {known}; not {unknown[0]!r}")
    return list(dict.fromkeys(RESULT_SERIALIZERS[path] for path in raw))


def submit_answer(
    request_id: str, endpoint_id: str, batch: ComputeSubmit, answer: SubmitResponse
) -> dict[str, Any]:
    """The submit answer: the task ids per function id, in the order of the body."""
    ids = iter(answer["task_ids"])
    tasks: dict[str, list[str]] = {}
    for function_id, count in batch.counts:
        tasks.setdefault(function_id, []).extend(next(ids) for _ in range(count))
    return {
        "request_id": request_id,
        "task_group_id": answer["task_group_id"],
        "endpoint_id": endpoint_id,
        "tasks": tasks,
    }


def _failure_text(info: TaskInfo) -> str:
    if info["state"] == TaskState.CANCELLED:
        return "TaskCancelled: the task was cancelled before it finished"
    record = info.get("exception")
    if record is None:
        return "UnknownError: the task failed without a reason"
    return record["traceback"] or f"{record['type']}: {record['message']}"


def task_document(info: TaskInfo) -> dict[str, Any]:
    """The task as that SDK reads it (``GET /v2/tasks/{id}``, ``POST /v2/batch_status``).

    ``status`` is fxbroker's state while pending; a cancelled task reads as ``failed`` (that
    SDK knows no cancelled state, and would otherwise poll it for ever).
    """
    if info["state"] in PENDING:
        return {"task_id": info["task_id"], "status": info["state"]}
    completed = info["completed_at"]
    document: dict[str, Any] = {
        "task_id": info["task_id"],
        "status": "success" if info["state"] == TaskState.SUCCESS else "failed",
        "completion_t": str(completed if completed is not None else 0.0),
    }
    if info["state"] == TaskState.SUCCESS and "result" in info:
        document["result"] = info["result"]
    elif info["state"] != TaskState.SUCCESS:
        document["exception"] = _failure_text(info)
    return document
