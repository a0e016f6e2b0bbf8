"""Tasks (read one or up to 1000, cancel one or up to 1000) and task groups (list, read).

Tasks are read from their Redis hashes, so a task is visible as soon as its submit
returned and until its result expires (``result_ttl_s`` after it completed). Only the
user who submitted a task sees or cancels it; for anyone else it does not exist.

Both reads take ``?wait_s=N`` (0 to 30 seconds, a long poll): the answer comes as soon as
any of the tasks is terminal, else after ``N`` seconds with their current states
(:mod:`web_service.taskstore.waiting` says why "any" and how it waits without polling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from starlette.requests import Request
from starlette.routing import Route

from web_service.context import context_of
from web_service.errors import invalid, not_found
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.routes.bodies import (
    DEFAULT_GROUP_PAGE_LIMIT,
    MAX_GROUP_PAGE_LIMIT,
    parse_page,
    parse_task_ids,
    read_json,
)
from web_service.taskstore.tasks import task_group_page
from web_service.taskstore.waiting import MAX_WAIT_S, read_tasks_waiting

__all__ = ["routes"]


def parse_wait_s(query: Mapping[str, str]) -> float:
    """``?wait_s=``: seconds to wait for a task to finish, a finite number from 0 to
    :data:`MAX_WAIT_S` (default 0: answer at once)."""
    raw = query.get("wait_s")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_WAIT_S):
        raise invalid(f"wait_s must be a number of seconds from 0 to {MAX_WAIT_S:g}, not {raw!r}")
    return value


async def get_task(request: Request) -> JSONResponse:
    """``GET /v1/tasks/{task_id}?wait_s``: a :class:`~sdk.messages.TaskInfo`; 404 if not the
    caller's. With ``wait_s``, answers once the task is terminal or after that long."""
    context = context_of(request)
    task_id = request.path_params["task_id"]
    wait_s = parse_wait_s(request.query_params)
    found = await read_tasks_waiting(
        context.redis,
        context.keys,
        context.watcher,
        caller_of(request).user_id,
        [task_id],
        wait_s=wait_s,
    )
    info = found.get(task_id)
    if info is None:
        raise not_found("task", task_id)
    return JSONResponse(info)


async def batch_status(request: Request) -> JSONResponse:
    """``POST /v1/tasks/batch_status?wait_s``: ``{"tasks": {id: TaskInfo}, "unknown": [ids]}``.

    Takes 1 to 1000 ids. ``unknown`` lists, in request order, the ids that do not exist,
    have expired, or are someone else's. One Redis round trip without ``wait_s``; with it,
    the answer waits until any of the known tasks is terminal or ``wait_s`` ends.
    """
    context = context_of(request)
    wait_s = parse_wait_s(request.query_params)
    task_ids = parse_task_ids(await read_json(request, max_bytes=context.settings.max_body_bytes))
    found = await read_tasks_waiting(
        context.redis,
        context.keys,
        context.watcher,
        caller_of(request).user_id,
        task_ids,
        wait_s=wait_s,
    )
    unknown = [task_id for task_id in task_ids if task_id not in found]
    return JSONResponse({"tasks": found, "unknown": unknown})


async def cancel_task(request: Request) -> JSONResponse:
    """``POST /v1/tasks/{task_id}/cancel``: ``{"task_id", "state", "outcome"}``.

    ``outcome`` is ``cancelled`` (it was queued: it will never run and is now ``cancelled``),
    ``interrupt_requested`` (it is running: its agent is told to interrupt it and will
    write ``cancelled``) or ``finished`` (nothing to do). See :mod:`web_service.taskstore.cancel`.
    """
    context = context_of(request)
    task_id = request.path_params["task_id"]
    results = await context.canceller.cancel(caller_of(request).user_id, [task_id])
    if task_id not in results:
        raise not_found("task", task_id)
    if results[task_id]["outcome"] == "cancelled":
        context.metrics.tasks_cancelled.inc()
    return JSONResponse(results[task_id])


async def cancel_tasks(request: Request) -> JSONResponse:
    """``POST /v1/tasks/cancel`` ``{"task_ids"}``: ``{"tasks": {id: result}, "unknown": [ids]}``.

    Takes 1 to 1000 ids; each result is as ``POST /v1/tasks/{task_id}/cancel`` answers.
    Two Redis round trips for the whole batch.
    """
    context = context_of(request)
    task_ids = parse_task_ids(await read_json(request, max_bytes=context.settings.max_body_bytes))
    results = await context.canceller.cancel(caller_of(request).user_id, task_ids)
    context.metrics.tasks_cancelled.inc(
        sum(1 for result in results.values() if result["outcome"] == "cancelled")
    )
    unknown = [task_id for task_id in task_ids if task_id not in results]
    return JSONResponse({"tasks": results, "unknown": unknown})


async def list_task_groups(request: Request) -> JSONResponse:
    """``GET /v1/task_groups?limit&offset``: the caller's task groups, oldest first."""
    context = context_of(request)
    page = parse_page(request.query_params)
    records = await context.task_groups.list_for(
        caller_of(request).user_id, limit=page.limit, offset=page.offset
    )
    return JSONResponse(
        {
            "task_groups": [
                {"task_group_id": record.id, "created_at": record.created_at} for record in records
            ]
        }
    )


async def get_task_group(request: Request) -> JSONResponse:
    """``GET /v1/task_groups/{task_group_id}?limit&offset``: a page of its tasks (1000 by default).

    ``{"task_group_id", "created_at", "total", "task_ids", "tasks": [{"task_id", "state"}]}``:
    tasks in submission order (``state`` is null once a task's record expired); ``total``
    counts every task submitted into the group until the list expires. ``limit=0`` answers
    the group and its total alone, reading no task (what ws_service asks to learn whether a
    group is the caller's).
    """
    context = context_of(request)
    task_group_id = request.path_params["task_group_id"]
    page = parse_page(
        request.query_params,
        default=DEFAULT_GROUP_PAGE_LIMIT,
        maximum=MAX_GROUP_PAGE_LIMIT,
        minimum=0,
    )
    record = await context.task_groups.get(caller_of(request).user_id, task_group_id)
    if record is None:
        raise not_found("task_group", task_group_id)
    total, tasks = await task_group_page(
        context.redis, context.keys, task_group_id, offset=page.offset, limit=page.limit
    )
    return JSONResponse(
        {
            "task_group_id": record.id,
            "created_at": record.created_at,
            "total": total,
            "task_ids": [task_id for task_id, _ in tasks],
            "tasks": [{"task_id": task_id, "state": state} for task_id, state in tasks],
        }
    )


routes = [
    Route("/v1/tasks/batch_status", batch_status, methods=["POST"]),
    Route("/v1/tasks/cancel", cancel_tasks, methods=["POST"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/task_groups", list_task_groups, methods=["GET"]),
    Route("/v1/task_groups/{task_group_id}", get_task_group, methods=["GET"]),
]
