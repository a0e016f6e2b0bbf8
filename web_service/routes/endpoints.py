"""Endpoints: register, list, read, delete, status, sharing, the allow-list and the
endpoint's credential.

An endpoint the caller may not use answers 404 ``ENDPOINT_NOT_FOUND`` whether or not it
exists. A user it is shared with may read it and its status and submit to it; changing it
(delete, sharing, allow-list, credential) answers them 403 ``FORBIDDEN``.

A credential is in an answer only when that request issued it: registering a new (or a
deleted) endpoint, or rotating. It is never shown again; the owner sees only its first
characters and when it was issued (``GET /v1/endpoints/{id}``). See
:mod:`web_service.store.endpoints` for its lifecycle.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from web_service.context import context_of
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.overview import (
    BUCKET_S,
    MAX_GROUPS,
    SAMPLE_TASKS,
    WINDOW_S,
    endpoint_statuses,
    endpoint_view,
    read_sample,
    status_view,
)
from web_service.routes.bodies import (
    parse_endpoint_registration,
    parse_function_ids,
    parse_page,
    parse_user_names,
    read_json,
)
from web_service.routes.lookups import owned_endpoint, usable_endpoint
from web_service.store.endpoints import EndpointRecord
from web_service.taskstore.endpoint_state import (
    endpoint_load,
    endpoint_status,
    set_allowed_functions,
)

__all__ = ["routes"]


def credential_view(record: EndpointRecord) -> dict[str, Any] | None:
    """What the owner may see of the endpoint's live credential: never the credential."""
    if record.credential_prefix is None:
        return None
    return {"prefix": record.credential_prefix, "issued_at": record.credential_issued_at}


async def register_endpoint(request: Request) -> JSONResponse:
    """``POST /v1/endpoints``: the same name gives the same id (reviving it if deleted).

    Creating or reviving the endpoint issues its credential, in ``credential`` (shown this
    once); finding an existing one answers without it."""
    context = context_of(request)
    caller = caller_of(request)
    name = parse_endpoint_registration(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    record, credential = await context.endpoints.register(caller.user_id, name)
    body = endpoint_view(record, caller)
    if credential is not None:
        body["credential"] = credential
    return JSONResponse(body)


async def list_endpoints(request: Request) -> JSONResponse:
    """``GET /v1/endpoints?limit&offset``: the caller's endpoints and those shared with them."""
    context = context_of(request)
    caller = caller_of(request)
    page = parse_page(request.query_params)
    records = await context.endpoints.list_for(caller.user_id, limit=page.limit, offset=page.offset)
    return JSONResponse({"endpoints": [endpoint_view(record, caller) for record in records]})


async def get_endpoint(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/{endpoint_id}``: the endpoint and its agents' heartbeat (or null);
    for the owner also ``credential``: its prefix and issue time, or null when it has none."""
    context, caller, record = await usable_endpoint(request)
    body = endpoint_view(record, caller)
    body["status"] = await endpoint_status(context.redis, context.keys, record.id)
    if record.owner_id == caller.user_id:
        body["credential"] = credential_view(record)
    return JSONResponse(body)


async def get_status(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/{endpoint_id}/status``: online or not, capacity and load.

    ``online`` is true while an agent's heartbeat is live (it expires three heartbeats after
    the last); ``queued`` counts tasks no agent has read yet, ``in_flight`` those agents
    hold; the rest is the latest heartbeat (null when offline).
    """
    context, _, record = await usable_endpoint(request)
    beat = await endpoint_status(context.redis, context.keys, record.id) or {}
    queued, in_flight = (await endpoint_load(context.redis, context.keys, [record.id]))[record.id]
    return JSONResponse(status_view(record.id, beat, queued, in_flight))


async def list_statuses(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/status?limit&offset``: a page of the caller's endpoints and those
    shared with them, each as ``GET /v1/endpoints`` and ``.../{id}/status`` show it, with
    ``finished`` and ``tasks_per_s`` counted from the caller's own recent tasks (see
    :mod:`web_service.overview`: what ``fxbroker status`` and the dashboard show).

    Cost: two SQL reads (the page of endpoints, the caller's newest task groups), then
    two Redis round trips for the sample of tasks, one per endpoint for the heartbeats (run
    together) and one for every queue's load, whatever the number of tasks. ``now`` is the
    service's clock, to age ``last_heartbeat`` by.
    """
    context = context_of(request)
    caller = caller_of(request)
    page = parse_page(request.query_params)
    records = await context.endpoints.list_for(caller.user_id, limit=page.limit, offset=page.offset)
    groups = await context.task_groups.recent_for(caller.user_id, limit=MAX_GROUPS)
    sample = await read_sample(context, caller.user_id, [group.id for group in groups])
    now = time.time()
    endpoints = await endpoint_statuses(context, caller, records, sample, now=now)
    return JSONResponse(
        {"now": now, "window_s": WINDOW_S, "bucket_s": BUCKET_S, "sample_tasks": SAMPLE_TASKS,
         "endpoints": endpoints}
    )  # fmt: skip


async def delete_endpoint(request: Request) -> JSONResponse:
    """``DELETE /v1/endpoints/{endpoint_id}``: hidden from everyone, refuses new tasks."""
    context, _, record = await owned_endpoint(request)
    await context.endpoints.delete(record.id)
    return JSONResponse({"endpoint_id": record.id, "deleted": True})


async def get_sharing(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/{endpoint_id}/sharing``: ``{"users"}`` (owner only)."""
    context, _, record = await owned_endpoint(request)
    users = await context.endpoints.shared_with(record.id)
    return JSONResponse({"endpoint_id": record.id, "users": users})


async def put_sharing(request: Request) -> JSONResponse:
    """``PUT /v1/endpoints/{endpoint_id}/sharing`` ``{"users"}``: share with exactly them."""
    context, caller, record = await owned_endpoint(request)
    names = parse_user_names(await read_json(request, max_bytes=context.settings.max_body_bytes))
    await context.endpoints.set_shares(record.id, names=names, owner_id=caller.user_id)
    users = await context.endpoints.shared_with(record.id)
    return JSONResponse({"endpoint_id": record.id, "users": users})


async def get_allowed_functions(request: Request) -> JSONResponse:
    """``GET /v1/endpoints/{endpoint_id}/allowed_functions``: ``{"function_ids"}``.

    An empty list means the endpoint runs any function its users may run.
    """
    _, _, record = await usable_endpoint(request)
    return JSONResponse(
        {"endpoint_id": record.id, "function_ids": sorted(record.allowed_functions)}
    )


async def put_allowed_functions(request: Request) -> JSONResponse:
    """``PUT /v1/endpoints/{endpoint_id}/allowed_functions`` ``{"function_ids"}``: replace it.

    Written to SQL, then mirrored into Redis for the agents; a failure between the two is
    mended by repeating the request.
    """
    context, _, record = await owned_endpoint(request)
    function_ids = parse_function_ids(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    await context.endpoints.set_allowed_functions(record.id, function_ids)
    await set_allowed_functions(context.redis, context.keys, record.id, function_ids)
    return JSONResponse({"endpoint_id": record.id, "function_ids": sorted(function_ids)})


async def rotate_credential(request: Request) -> JSONResponse:
    """``POST /v1/endpoints/{endpoint_id}/credential``: a new credential (shown this once)
    replaces the endpoint's old one, which stops working at once on the web service and
    within ``auth_cache_s`` on the ws service; also how an endpoint without one gets one."""
    context, _, record = await owned_endpoint(request)
    credential, issued_at = await context.endpoints.rotate_credential(record.id)
    return JSONResponse(
        {"endpoint_id": record.id, "credential": credential, "issued_at": issued_at}
    )


async def revoke_credential(request: Request) -> JSONResponse:
    """``DELETE /v1/endpoints/{endpoint_id}/credential``: the endpoint has no credential
    afterwards (its agents are refused until the owner rotates one); ``revoked`` says
    whether it had one."""
    context, _, record = await owned_endpoint(request)
    revoked = await context.endpoints.revoke_credential(record.id)
    return JSONResponse({"endpoint_id": record.id, "revoked": revoked})


routes = [
    Route("/v1/endpoints", register_endpoint, methods=["POST"]),
    Route("/v1/endpoints", list_endpoints, methods=["GET"]),
    Route("/v1/endpoints/status", list_statuses, methods=["GET"]),  # before the {endpoint_id}
    Route("/v1/endpoints/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route("/v1/endpoints/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
    Route("/v1/endpoints/{endpoint_id}/status", get_status, methods=["GET"]),
    Route("/v1/endpoints/{endpoint_id}/sharing", get_sharing, methods=["GET"]),
    Route("/v1/endpoints/{endpoint_id}/sharing", put_sharing, methods=["PUT"]),
    Route("/v1/endpoints/{endpoint_id}/allowed_functions", get_allowed_functions, methods=["GET"]),
    Route("/v1/endpoints/{endpoint_id}/allowed_functions", put_allowed_functions, methods=["PUT"]),
    Route("/v1/endpoints/{endpoint_id}/credential", rotate_credential, methods=["POST"]),
    Route("/v1/endpoints/{endpoint_id}/credential", revoke_credential, methods=["DELETE"]),
]
