"""Request bodies: read within the size limit, then checked into typed records.

The parsers are pure functions; each rejects what it cannot use with a 4xx
:class:`~web_service.errors.ApiError` that names the offending field. Fields they do not
know are ignored, so newer clients keep working.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from sdk.messages import TaskSpec
from sdk.serialize import IDENTIFIER_LENGTH, STRATEGIES
from sdk.wire import GROUP_PAGE_DEFAULT, GROUP_PAGE_MAX, IDS_PER_REQUEST
from web_service.errors import ApiError, bad_request, invalid
from web_service.store.models import is_id

MAX_NAME_LENGTH = 255
MAX_STATUS_IDS = IDS_PER_REQUEST
MAX_LIST_ITEMS = 1000
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000
DEFAULT_GROUP_PAGE_LIMIT = GROUP_PAGE_DEFAULT
MAX_GROUP_PAGE_LIMIT = GROUP_PAGE_MAX
MAX_OFFSET = 2**31 - 1
MAX_WALLTIME_S = 7 * 24 * 3600
"""The longest walltime one task may ask for: a week."""
NO_NUL = r"^[^\x00]*$"
"""The pattern of a string kept in SQL: PostgreSQL's text holds no NUL character."""


@dataclass(frozen=True, kw_only=True)
class FunctionRegistration:
    name: str
    code: str
    description: str


@dataclass(frozen=True, kw_only=True)
class Page:
    limit: int
    offset: int


@dataclass(frozen=True, kw_only=True)
class SubmitBatch:
    tasks: list[TaskSpec]
    task_group_id: str | None
    result_strategies: tuple[str, ...] = ()
    """Serialization strategy ids the agent should try for results, in order (none: its own)."""


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"the request body is over {max_bytes} bytes")


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The JSON body of ``request``; 413 past ``max_bytes`` (counted as it arrives)."""
    return parse_json(await read_body(request, max_bytes=max_bytes))


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The raw body of ``request``; 413 past ``max_bytes``, 400 when empty."""
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
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON; 400 when it is not JSON. orjson first (a batch of large
    arguments is mostly long strings); what it refuses (a number past 64 bits, UTF-16) the
    standard parser decides."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from exc


def json_object(data: Any, what: str = "the body") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid(f"{what} must be a JSON object")
    return data


def string_field(
    data: dict[str, Any], field: str, *, where: str = "", default: str | None = None
) -> str:
    value = data.get(field, default)
    if not isinstance(value, str):
        raise invalid(f"{where}{field} must be a string")
    return value


def text_field(data: dict[str, Any], field: str, *, default: str | None = None) -> str:
    """A string field kept in SQL: any string without a NUL character."""
    value = string_field(data, field, default=default)
    if "\x00" in value:
        raise invalid(f"{field} must not contain NUL characters")
    return value


def check_name(name: str, field: str) -> str:
    """``name`` if it is 1 to ``MAX_NAME_LENGTH`` characters, not blank, without NUL."""
    if not name.strip() or len(name) > MAX_NAME_LENGTH or "\x00" in name:
        raise invalid(f"{field} must be 1 to {MAX_NAME_LENGTH} characters, not blank, without NUL")
    return name


def name_field(data: dict[str, Any], field: str) -> str:
    return check_name(string_field(data, field), field)


def parse_function_registration(data: Any) -> FunctionRegistration:
    """``{"function_name", "function_code", "description"?}``; the code must be a code buffer."""
    body = json_object(data)
    code = text_field(body, "function_code")
    strategy = STRATEGIES.get(code[: IDENTIFIER_LENGTH - 1])
    if (
        strategy is None
        or not strategy.for_code
        or code[IDENTIFIER_LENGTH - 1 : IDENTIFIER_LENGTH] != "\n"
    ):
        raise invalid("function_code must be a serialized code buffer (strategy 01 or st)")
    return FunctionRegistration(
        name=name_field(body, "function_name"),
        code=code,
        description=text_field(body, "description", default=""),
    )


def parse_endpoint_registration(data: Any) -> str:
    """``{"name"}``: the endpoint's name."""
    return name_field(json_object(data), "name")


def parse_submit(data: Any, *, max_tasks: int) -> SubmitBatch:
    """A :class:`~sdk.messages.SubmitRequest`: 1 to ``max_tasks`` tasks, an optional group id."""
    body = json_object(data)
    raw_tasks = body.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise invalid("tasks must be a non-empty list")
    if len(raw_tasks) > max_tasks:
        raise invalid(f"a batch holds at most {max_tasks} tasks, this one {len(raw_tasks)}")
    tasks: list[TaskSpec] = []
    for index, raw in enumerate(raw_tasks):
        # The common task first, with no call and no message built (a fifth of the web
        # service's time per task went to this loop); anything else takes the full checks.
        if isinstance(raw, dict) and "walltime_s" not in raw:
            function_id, payload = raw.get("function_id"), raw.get("payload")
            if isinstance(function_id, str) and isinstance(payload, str):
                tasks.append({"function_id": function_id, "payload": payload})
                continue
        tasks.append(_task_spec(raw, index))
    task_group_id = body.get("task_group_id")
    if task_group_id is not None and not (isinstance(task_group_id, str) and is_id(task_group_id)):
        raise invalid("task_group_id must be a uuid or null")
    return SubmitBatch(tasks=tasks, task_group_id=task_group_id)


def _task_spec(raw: Any, index: int) -> TaskSpec:
    """``tasks[index]`` of a submit, every check made, each with its own message."""
    where = f"tasks[{index}]."
    item = json_object(raw, f"tasks[{index}]")
    task: TaskSpec = {
        "function_id": string_field(item, "function_id", where=where),
        "payload": string_field(item, "payload", where=where),
    }
    walltime_s = _walltime_s(item, where=where)
    if walltime_s is not None:
        task["walltime_s"] = walltime_s
    return task


def _walltime_s(item: dict[str, Any], *, where: str) -> float | None:
    """A task's optional ``walltime_s``: seconds, a finite number above 0, at most a week."""
    value = item.get("walltime_s")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 < value <= MAX_WALLTIME_S)
        or not math.isfinite(value)
    ):
        raise invalid(
            f"{where}walltime_s must be a number of seconds above 0 and at most "
            f"{MAX_WALLTIME_S}, not {value!r}"
        )
    return float(value)


def _strings(data: dict[str, Any], field: str, *, min_items: int, max_items: int) -> list[str]:
    """``data[field]``: a list of ``min_items`` to ``max_items`` strings, duplicates dropped."""
    items = data.get(field)
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise invalid(f"{field} must be a list of strings")
    if not min_items <= len(items) <= max_items:
        raise invalid(f"{field} must hold {min_items} to {max_items} items, not {len(items)}")
    return list(dict.fromkeys(items))


def parse_task_ids(data: Any) -> list[str]:
    """``{"task_ids": [...]}``: 1 to 1000 ids, duplicates dropped, order kept."""
    return _strings(json_object(data), "task_ids", min_items=1, max_items=MAX_STATUS_IDS)


def parse_user_names(data: Any) -> list[str]:
    """``{"users": [names]}``: 0 to 1000 user names to share with (all of them, replacing)."""
    names = _strings(json_object(data), "users", min_items=0, max_items=MAX_LIST_ITEMS)
    return [check_name(name, "users[]") for name in names]


def parse_function_sharing(data: Any) -> tuple[bool, list[str]]:
    """``{"public": bool, "users": [names]}``."""
    body = json_object(data)
    public = body.get("public")
    if not isinstance(public, bool):
        raise invalid("public must be true or false")
    return public, parse_user_names(body)


def parse_function_ids(data: Any) -> list[str]:
    """``{"function_ids": [ids]}``: 0 to 1000 function ids (an allow-list; empty lifts it)."""
    ids = _strings(json_object(data), "function_ids", min_items=0, max_items=MAX_LIST_ITEMS)
    bad = [function_id for function_id in ids if not is_id(function_id)]
    if bad:
        raise invalid(f"function_ids must be uuids; {bad[0]!r} is not")
    return ids


def parse_page(
    query: Mapping[str, str],
    *,
    default: int = DEFAULT_PAGE_LIMIT,
    maximum: int = MAX_PAGE_LIMIT,
    minimum: int = 1,
) -> Page:
    """``?limit=`` (``minimum`` to ``maximum``, default ``default``) and ``?offset=`` (0 or
    more)."""
    limit = _query_int(query, "limit", default, minimum, maximum)
    offset = _query_int(query, "offset", 0, 0, MAX_OFFSET)
    return Page(limit=limit, offset=offset)


def _query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid(f"{name} must be an integer from {low} to {high}")
    return int(raw)
