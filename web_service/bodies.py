"""Request bodies: read within the size limit, then checked into typed records.

The parsers are pure functions; each rejects what it cannot use with a 4xx
:class:`~web_service.errors.ApiError` that names the offending field. Fields they do not
know are ignored, so newer clients keep working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from sdk.messages import TaskSpec
from sdk.serialize import IDENTIFIER_LENGTH, STRATEGIES
from web_service.errors import ApiError, bad_request, invalid
from web_service.models import is_id

MAX_NAME_LENGTH = 255
MAX_STATUS_IDS = 1000


@dataclass(frozen=True, kw_only=True)
class FunctionRegistration:
    name: str
    code: str
    description: str


@dataclass(frozen=True, kw_only=True)
class SubmitBatch:
    tasks: list[TaskSpec]
    task_group_id: str | None


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"the request body is over {max_bytes} bytes")


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The JSON body of ``request``; 413 past ``max_bytes`` (counted as it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    if not size:
        raise bad_request("the request needs a JSON body")
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from exc


def _object(data: Any, what: str = "the body") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid(f"{what} must be a JSON object")
    return data


def _string(
    data: dict[str, Any], field: str, *, where: str = "", default: str | None = None
) -> str:
    value = data.get(field, default)
    if not isinstance(value, str):
        raise invalid(f"{where}{field} must be a string")
    return value


def _name(data: dict[str, Any], field: str) -> str:
    name = _string(data, field)
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise invalid(f"{field} must be 1 to {MAX_NAME_LENGTH} characters, not blank")
    return name


def parse_function_registration(data: Any) -> FunctionRegistration:
    """``{"function_name", "function_code", "description"?}``; the code must be a code buffer."""
    body = _object(data)
    code = _string(body, "function_code")
    strategy = STRATEGIES.get(code[: IDENTIFIER_LENGTH - 1])
    if (
        strategy is None
        or not strategy.for_code
        or code[IDENTIFIER_LENGTH - 1 : IDENTIFIER_LENGTH] != "\n"
    ):
        raise invalid("function_code must be a serialized code buffer (strategy 01 or st)")
    return FunctionRegistration(
        name=_name(body, "function_name"),
        code=code,
        description=_string(body, "description", default=""),
    )


def parse_endpoint_registration(data: Any) -> str:
    """``{"name"}``: the endpoint's name."""
    return _name(_object(data), "name")


def parse_submit(data: Any, *, max_tasks: int) -> SubmitBatch:
    """A :class:`~sdk.messages.SubmitRequest`: 1 to ``max_tasks`` tasks, an optional group id."""
    body = _object(data)
    raw_tasks = body.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise invalid("tasks must be a non-empty list")
    if len(raw_tasks) > max_tasks:
        raise invalid(f"a batch holds at most {max_tasks} tasks, this one {len(raw_tasks)}")
    tasks: list[TaskSpec] = []
    for index, raw in enumerate(raw_tasks):
        where = f"tasks[{index}]."
        item = _object(raw, f"tasks[{index}]")
        tasks.append(
            {
                "function_id": _string(item, "function_id", where=where),
                "payload": _string(item, "payload", where=where),
            }
        )
    task_group_id = body.get("task_group_id")
    if task_group_id is not None and not (isinstance(task_group_id, str) and is_id(task_group_id)):
        raise invalid("task_group_id must be a uuid or null")
    return SubmitBatch(tasks=tasks, task_group_id=task_group_id)


def parse_task_ids(data: Any) -> list[str]:
    """``{"task_ids": [...]}``: 1 to 1000 ids, duplicates dropped, order kept."""
    ids = _object(data).get("task_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("task_ids must be a list of strings")
    if not ids or len(ids) > MAX_STATUS_IDS:
        raise invalid(f"task_ids must hold 1 to {MAX_STATUS_IDS} ids, not {len(ids)}")
    return list(dict.fromkeys(ids))
