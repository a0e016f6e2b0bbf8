"""Registering endpoints, their status, and submitting batches of tasks to them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sdk.messages import SubmitResponse
from web_service.auth import caller_of
from web_service.bodies import parse_endpoint_registration, parse_submit, read_json
from web_service.context import context_of
from web_service.errors import not_found
from web_service.queue import endpoint_status, enqueue

MAX_IDS_NAMED = 10


async def register_endpoint(request: Request) -> JSONResponse:
    """``POST /v1/endpoints``: ``{"endpoint_id", "name"}``; the same name gives the same id."""
    context = context_of(request)
    name = parse_endpoint_registration(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    record = await context.catalog.register_endpoint(caller_of(request).user_id, name)
    return JSONResponse({"endpoint_id": record.id, "name": record.name})


async def get_endpoint(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/{endpoint_id}``: name and the agents' heartbeat (null if none)."""
    context = context_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    record = await context.catalog.endpoint(caller_of(request).user_id, endpoint_id)
    if record is None:
        raise not_found("endpoint", endpoint_id)
    status = await endpoint_status(context.redis, context.keys, endpoint_id)
    return JSONResponse({"endpoint_id": record.id, "name": record.name, "status": status})


async def submit(request: Request) -> JSONResponse:
    """``POST /v1/endpoints/{endpoint_id}/submit``: queue a batch; task ids in order.

    Checks, each answering 4xx before anything is queued: the body (413, 400, 422), the
    endpoint is the caller's (404 ENDPOINT_NOT_FOUND), every function is the caller's
    (404 FUNCTION_NOT_FOUND naming the ids), a given task group is not someone else's
    (404 TASK_GROUP_NOT_FOUND). Costs one Redis round trip and, once the caches are warm,
    one SQL statement (a new group's row) per batch; nothing per task.
    """
    context = context_of(request)
    caller = caller_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    batch = parse_submit(
        await read_json(request, max_bytes=context.settings.max_body_bytes),
        max_tasks=context.settings.max_tasks_per_batch,
    )
    if await context.catalog.endpoint(caller.user_id, endpoint_id) is None:
        raise not_found("endpoint", endpoint_id)
    function_ids = list(dict.fromkeys(task["function_id"] for task in batch.tasks))
    codes, missing = await context.catalog.function_codes(caller.user_id, function_ids)
    if missing:
        raise not_found("function", ", ".join(missing[:MAX_IDS_NAMED]))
    task_group_id = await context.catalog.claim_task_group(caller.user_id, batch.task_group_id)
    if task_group_id is None:
        raise not_found("task_group", str(batch.task_group_id))
    task_ids = await enqueue(
        context.redis,
        context.keys,
        user_id=caller.user_id,
        endpoint_id=endpoint_id,
        task_group_id=task_group_id,
        tasks=batch.tasks,
        codes=codes,
        result_ttl_s=context.settings.result_ttl_s,
    )
    response: SubmitResponse = {"task_group_id": task_group_id, "task_ids": task_ids}
    return JSONResponse(response)


routes = [
    Route("/v1/endpoints", register_endpoint, methods=["POST"]),
    Route("/v1/endpoints/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route("/v1/endpoints/{endpoint_id}/submit", submit, methods=["POST"]),
]
