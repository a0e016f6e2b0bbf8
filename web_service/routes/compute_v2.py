"""The Globus Compute ``/v2`` routes: what the unmodified ``globus-compute-sdk`` (4.x) reads.

Version document, functions (read, delete), endpoints (list, read, status, delete), tasks
(one, or a batch of status), task groups and the AMQP connection of its Executor. The same
users, tokens, isolation and rate limit as ``/v1`` (:mod:`web_service.middleware.auth`), and
the same stores: a task submitted through either API reads through both. Errors have the
``/v1`` shape ``{"code", "message", "request_id"}``, which that SDK parses into
``ComputeAPIError``; a client's mistake is always a 4xx (that SDK retries a 5xx five times).
Documents are translated by :mod:`web_service.routes.compute_documents`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from service_common.amqp import QUEUE_PREFIX
from web_service.context import context_of
from web_service.errors import ApiError, forbidden, invalid, not_found
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.routes.bodies import (
    MAX_GROUP_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    parse_task_ids,
    read_json,
)
from web_service.routes.compute_documents import (
    MIN_EP_VERSION,
    MIN_SDK_VERSION,
    globus_function_code,
    task_document,
)
from web_service.routes.lookups import usable_endpoint, usable_function
from web_service.store.endpoints import EndpointRecord
from web_service.taskstore.endpoint_state import endpoint_load, endpoint_status
from web_service.taskstore.tasks import read_task, read_tasks, task_group_page

__all__ = ["AMQP_QUEUE_PREFIX", "routes"]

AMQP_QUEUE_PREFIX = QUEUE_PREFIX
"""Each task group's result queue is this prefix and the group's id."""
ENDPOINT_ROLES = frozenset({"owner", "any"})


async def version(request: Request) -> JSONResponse:
    """``GET /v2/version``: ``{"api", "min_sdk_version", "min_ep_version"}`` (no token)."""
    return JSONResponse(
        {
            "api": context_of(request).version,
            "min_sdk_version": MIN_SDK_VERSION,
            "min_ep_version": MIN_EP_VERSION,
        }
    )


async def get_function(request: Request) -> JSONResponse:
    """``GET /v2/functions/{id}``: ``function_uuid``, name, description, and for its owner
    ``function_code`` packed as that SDK registers it."""
    _, caller, record = await usable_function(request)
    body: dict[str, Any] = {
        "function_uuid": record.id,
        "function_name": record.name,
        "description": record.description,
        "public": record.public,
        "owner": record.owner_id,
    }
    if record.owner_id == caller.user_id:
        body["function_code"] = globus_function_code(record.code)
    return JSONResponse(body)


async def delete_function(request: Request) -> JSONResponse:
    """``DELETE /v2/functions/{id}``: as ``DELETE /v1/functions/{id}`` (owner only)."""
    context, caller, record = await usable_function(request)
    if record.owner_id != caller.user_id:
        raise forbidden("only the function's owner may do that")
    await context.functions.delete(record.id)
    return JSONResponse({"function_uuid": record.id, "deleted": True})


def endpoint_document(record: EndpointRecord) -> dict[str, Any]:
    return {
        "uuid": record.id,
        "name": record.name,
        "display_name": record.name,
        "owner": record.owner_id,
        "multi_user": False,
        "public": False,
    }


async def list_endpoints(request: Request) -> JSONResponse:
    """``GET /v2/endpoints?role=owner|any``: a list; ``owner`` (the default, as Globus
    Compute's) the caller's own, ``any`` also those shared with them (the first 1000)."""
    context = context_of(request)
    caller = caller_of(request)
    role = request.query_params.get("role", "owner")
    if role not in ENDPOINT_ROLES:
        raise invalid(f"role must be one of {', '.join(sorted(ENDPOINT_ROLES))}")
    records = await context.endpoints.list_for(caller.user_id, limit=MAX_PAGE_LIMIT, offset=0)
    return JSONResponse(
        [
            endpoint_document(record)
            for record in records
            if role == "any" or record.owner_id == caller.user_id
        ]
    )


async def get_endpoint(request: Request) -> JSONResponse:
    """``GET /v2/endpoints/{id}``: the endpoint, and ``status`` online or offline."""
    context, _, record = await usable_endpoint(request)
    body = endpoint_document(record)
    beat = await endpoint_status(context.redis, context.keys, record.id)
    body["status"] = "online" if beat else "offline"
    body["endpoint_version"] = (beat or {}).get("version")
    return JSONResponse(body)


def _count(beat: dict[str, str], name: str) -> int:
    try:
        return max(int(beat.get(name, "0")), 0)
    except ValueError:
        return 0


async def get_endpoint_status(request: Request) -> JSONResponse:
    """``GET /v2/endpoints/{id}/status``: ``{"status": "online"|"offline", "details":
    {"total_workers", "idle_workers", "pending_tasks", "outstanding_tasks", "managers"}}``
    from the agents' latest heartbeat and the endpoint's stream (zeros when offline)."""
    context, _, record = await usable_endpoint(request)
    beat = await endpoint_status(context.redis, context.keys, record.id) or {}
    queued, in_flight = (await endpoint_load(context.redis, context.keys, [record.id]))[record.id]
    workers, running = _count(beat, "workers"), _count(beat, "running")
    return JSONResponse(
        {
            "status": "online" if beat else "offline",
            "details": {
                "total_workers": workers,
                "idle_workers": max(workers - running, 0),
                "pending_tasks": queued,
                "outstanding_tasks": queued + in_flight,
                "managers": 1 if beat else 0,
            },
        }
    )


async def delete_endpoint(request: Request) -> JSONResponse:
    """``DELETE /v2/endpoints/{id}``: as ``DELETE /v1/endpoints/{id}`` (owner only)."""
    context, caller, record = await usable_endpoint(request)
    if record.owner_id != caller.user_id:
        raise forbidden("only the endpoint's owner may do that")
    await context.endpoints.delete(record.id)
    return JSONResponse({"endpoint_id": record.id, "deleted": True})


async def get_task(request: Request) -> JSONResponse:
    """``GET /v2/tasks/{id}``: the task document; 404 ``TASK_NOT_FOUND`` if not the caller's."""
    context = context_of(request)
    task_id = request.path_params["task_id"]
    info = await read_task(context.redis, context.keys, caller_of(request).user_id, task_id)
    if info is None:
        raise not_found("task", task_id)
    return JSONResponse(task_document(info))


async def batch_status(request: Request) -> JSONResponse:
    """``POST /v2/batch_status`` ``{"task_ids"}`` (1 to 1000): ``{"response": "batch",
    "results": {id: document}}``; ids that are unknown, expired or someone else's are left
    out (that SDK skips them). One Redis round trip."""
    context = context_of(request)
    task_ids = parse_task_ids(await read_json(request, max_bytes=context.settings.max_body_bytes))
    found = await read_tasks(context.redis, context.keys, caller_of(request).user_id, task_ids)
    return JSONResponse(
        {
            "response": "batch",
            "results": {task_id: task_document(info) for task_id, info in found.items()},
        }
    )


async def get_task_group(request: Request) -> JSONResponse:
    """``GET /v2/taskgroup/{id}``: ``{"taskgroup_id", "tasks": [{"id"}]}``, every task of
    the group in submission order (one round trip per 1000 tasks)."""
    context = context_of(request)
    task_group_id = request.path_params["task_group_id"]
    record = await context.task_groups.get(caller_of(request).user_id, task_group_id)
    if record is None:
        raise not_found("task_group", task_group_id)
    task_ids: list[str] = []
    total = 1
    while len(task_ids) < total:
        total, page = await task_group_page(
            context.redis,
            context.keys,
            record.id,
            offset=len(task_ids),
            limit=MAX_GROUP_PAGE_LIMIT,
        )
        if not page:
            break
        task_ids.extend(task_id for task_id, _ in page)
    return JSONResponse(
        {
            "taskgroup_id": record.id,
            "create_websockets_queue": False,
            "tasks": [{"id": task_id} for task_id in task_ids],
        }
    )


AMQP_MISSING = (
    "this fxbroker has no RabbitMQ for Globus Compute Executor results: its operator sets "
    "FXBROKER_AMQP_URL on the web service (Client, polling and batch_status work without)"
)


def amqp_not_configured(status: int) -> ApiError:
    """``AMQP_NOT_CONFIGURED``: results for that SDK's Executor need RabbitMQ, which this
    service was not given; the message names ``FXBROKER_AMQP_URL``. A 4xx, so that SDK does
    not retry it (it retries 429, 500, 502, 503 and 504) and no client takes it for a fault."""
    return ApiError(status, "AMQP_NOT_CONFIGURED", AMQP_MISSING)


async def get_amqp_result_connection_url(request: Request) -> JSONResponse:
    """``GET /v2/get_amqp_result_connection_url``: ``{"queue_prefix", "connection_url"}``,
    the URL ``FXBROKER_AMQP_PUBLIC_URL`` else ``FXBROKER_AMQP_URL``; 404
    ``AMQP_NOT_CONFIGURED`` (naming ``FXBROKER_AMQP_URL``) when none is set."""
    context = context_of(request)
    if not context.settings.amqp_url:
        raise amqp_not_configured(404)
    return JSONResponse(
        {"queue_prefix": AMQP_QUEUE_PREFIX, "connection_url": context.settings.amqp_client_url}
    )


routes = [
    Route("/v2/version", version, methods=["GET"]),
    Route("/v2/functions/{function_id}", get_function, methods=["GET"]),
    Route("/v2/functions/{function_id}", delete_function, methods=["DELETE"]),
    Route("/v2/endpoints", list_endpoints, methods=["GET"]),
    Route("/v2/endpoints/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route("/v2/endpoints/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
    Route("/v2/endpoints/{endpoint_id}/status", get_endpoint_status, methods=["GET"]),
    Route("/v2/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v2/batch_status", batch_status, methods=["POST"]),
    Route("/v2/taskgroup/{task_group_id}", get_task_group, methods=["GET"]),
    Route("/v2/get_amqp_result_connection_url", get_amqp_result_connection_url, methods=["GET"]),
]
