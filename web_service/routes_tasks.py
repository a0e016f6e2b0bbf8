"""Reading tasks (one, or up to 1000 at once) and task groups.

Tasks are read from their Redis hashes, so a task is visible as soon as its submit
returned and until its result expires (``result_ttl_s`` after it completed).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from web_service.auth import caller_of
from web_service.bodies import parse_task_ids, read_json
from web_service.context import context_of
from web_service.errors import not_found
from web_service.queue import read_task, read_tasks, task_group_task_ids


async def get_task(request: Request) -> JSONResponse:
    """``GET /v1/tasks/{task_id}``: a :class:`~sdk.messages.TaskInfo`; 404 if not the caller's."""
    context = context_of(request)
    task_id = request.path_params["task_id"]
    info = await read_task(context.redis, context.keys, caller_of(request).user_id, task_id)
    if info is None:
        raise not_found("task", task_id)
    return JSONResponse(info)


async def batch_status(request: Request) -> JSONResponse:
    """``POST /v1/tasks/batch_status``: ``{"tasks": {id: TaskInfo}, "unknown": [ids]}``.

    ``unknown`` lists, in request order, the ids that do not exist, have expired, or are
    someone else's. One Redis round trip.
    """
    context = context_of(request)
    task_ids = parse_task_ids(await read_json(request, max_bytes=context.settings.max_body_bytes))
    found = await read_tasks(context.redis, context.keys, caller_of(request).user_id, task_ids)
    unknown = [task_id for task_id in task_ids if task_id not in found]
    return JSONResponse({"tasks": found, "unknown": unknown})


async def get_task_group(request: Request) -> JSONResponse:
    """``GET /v1/task_groups/{task_group_id}``: ``{"task_group_id", "created_at", "task_ids"}``.

    ``task_ids`` is every task submitted into the group, in order, until the list expires.
    """
    context = context_of(request)
    task_group_id = request.path_params["task_group_id"]
    record = await context.catalog.task_group(caller_of(request).user_id, task_group_id)
    if record is None:
        raise not_found("task_group", task_group_id)
    task_ids = await task_group_task_ids(context.redis, context.keys, task_group_id)
    return JSONResponse(
        {"task_group_id": record.id, "created_at": record.created_at, "task_ids": task_ids}
    )


routes = [
    Route("/v1/tasks/batch_status", batch_status, methods=["POST"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/task_groups/{task_group_id}", get_task_group, methods=["GET"]),
]
