"""The Globus Compute ``/v3`` routes: register functions and endpoints, lock, allow-lists and
batch submit, for the unmodified ``globus-compute-sdk`` (4.x).

The same users, tokens, isolation, limits and idempotency as ``/v1`` (see
:mod:`web_service.routes.compute_v2`): ``POST /v3/functions`` registers through the same
catalog as ``POST /v1/functions`` and submit runs :func:`web_service.routes.submit.queue_batch`,
the ``/v1`` submit's own core (checks, one Redis round trip, ``Idempotency-Key``).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from web_service.accounts import Caller
from web_service.context import AppContext, context_of
from web_service.errors import ApiError, invalid, not_found
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.routes.bodies import (
    MAX_LIST_ITEMS,
    SubmitBatch,
    json_object,
    name_field,
    parse_json,
    read_body,
    read_json,
)
from web_service.routes.compute_documents import (
    parse_registration,
    parse_submit,
    submit_answer,
)
from web_service.routes.compute_v2 import amqp_not_configured
from web_service.routes.lookups import owned_endpoint
from web_service.routes.submit import queue_batch
from web_service.store.models import is_id
from web_service.taskstore import idempotency
from web_service.taskstore.endpoint_state import set_allowed_functions
from web_service.taskstore.tasks import store_function_code

__all__ = ["routes"]


async def register_function(request: Request) -> JSONResponse:
    """``POST /v3/functions``: ``{"function_uuid"}``; the same code by the same user gets the
    same id (as ``POST /v1/functions``). Serialized code (DillCode, source strategies) or
    bare source with ``serialized: false``; see
    :func:`~web_service.routes.compute_documents.parse_registration`."""
    context = context_of(request)
    caller = caller_of(request)
    spec = parse_registration(await read_json(request, max_bytes=context.settings.max_body_bytes))
    function_id = await context.functions.register(
        caller.user_id, name=spec.name, description=spec.description, code=spec.code
    )
    await store_function_code(context.redis, context.keys, function_id, spec.code)
    return JSONResponse({"function_uuid": function_id})


def _allowed_functions(body: dict[str, Any]) -> list[str] | None:
    raw = body.get("allowed_functions")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise invalid("allowed_functions must be a list of function uuids")
    if len(raw) > MAX_LIST_ITEMS:
        raise invalid(f"allowed_functions holds at most {MAX_LIST_ITEMS} ids")
    bad = [item for item in raw if not is_id(item)]
    if bad:
        raise invalid(f"allowed_functions must be uuids; {bad[0]!r} is not")
    return list(dict.fromkeys(raw))


async def _registered(
    context: AppContext, caller: Caller, body: dict[str, Any], name: str
) -> JSONResponse:
    allowed = _allowed_functions(body)
    record, credential = await context.endpoints.register(caller.user_id, name)
    if allowed is not None:
        await context.endpoints.set_allowed_functions(record.id, allowed)
        await set_allowed_functions(context.redis, context.keys, record.id, allowed)
    answer: dict[str, Any] = {"endpoint_id": record.id, "name": record.name, "warnings": []}
    if credential is not None:
        answer["credential"] = credential
    return JSONResponse(answer)


async def register_endpoint(request: Request) -> JSONResponse:
    """``POST /v3/endpoints`` ``{"endpoint_name", "allowed_functions"?, ...}``: as ``POST
    /v1/endpoints`` (the same name gives the same id; a new endpoint's ``credential`` is in
    this answer only, for ``fxbroker endpoint configure``); ``allowed_functions`` replaces the
    allow-list. Globus-only fields (``multi_user``, ``authentication_policy``, ...) are
    ignored."""
    context = context_of(request)
    body = json_object(await read_json(request, max_bytes=context.settings.max_body_bytes))
    return await _registered(context, caller_of(request), body, name_field(body, "endpoint_name"))


async def update_endpoint(request: Request) -> JSONResponse:
    """``PUT /v3/endpoints/{id}``: registers an existing endpoint again under its own name
    (its ``allowed_functions`` replaced when given). fxbroker picks endpoint ids itself and
    does not rename: an id the caller has no endpoint with answers 404, another name 409."""
    context, caller, record = await owned_endpoint(request)
    body = json_object(await read_json(request, max_bytes=context.settings.max_body_bytes))
    name = name_field(body, "endpoint_name")
    if name != record.name:
        raise ApiError(
            409,
            "CONFLICT",
            f"endpoint {record.id} is named {record.name!r}; fxbroker endpoints keep their name",
        )
    return await _registered(context, caller, body, name)


async def lock_endpoint(request: Request) -> JSONResponse:
    """``POST /v3/endpoints/{id}/lock`` (the SDK's ``stop_endpoint``; owner only): answers
    ``{"endpoint_id", "lock_expiration_timestamp": null}``. fxbroker holds no lock and does
    not drop the agents' connections here: stop an agent with ``fxbroker endpoint stop``, or
    shut all out by revoking the endpoint's credential."""
    _, _, record = await owned_endpoint(request)
    return JSONResponse({"endpoint_id": record.id, "lock_expiration_timestamp": None})


async def get_allowed_functions(request: Request) -> JSONResponse:
    """``GET /v3/endpoints/{id}/allowed_functions``: ``{"endpoint_id", "restricted",
    "functions"}``; not restricted (an empty list) runs any function its users may run."""
    context = context_of(request)
    caller = caller_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    record = await context.endpoints.get(caller.user_id, endpoint_id)
    if record is None:
        raise not_found("endpoint", endpoint_id)
    functions = sorted(record.allowed_functions)
    return JSONResponse(
        {"endpoint_id": record.id, "restricted": bool(functions), "functions": functions}
    )


async def submit(request: Request) -> JSONResponse:
    """``POST /v3/endpoints/{id}/submit``: ``{"request_id", "task_group_id", "endpoint_id",
    "tasks": {function_id: [task_id, ...]}}``, the ids in the order of the payloads.

    ``task_group_id`` adds the tasks to an existing group of the caller's; ``create_queue``
    (sent by that SDK's Executor) needs ``FXBROKER_AMQP_URL``: without it the answer is 422
    ``AMQP_NOT_CONFIGURED`` and nothing is queued; with it, the group's queue is declared
    and the group recorded for the publisher before the answer
    (:meth:`~web_service.result_queues.ResultQueues.open`; 503 ``AMQP_UNAVAILABLE`` while
    RabbitMQ is away). ``result_serializers`` goes onto every task's stream entry as strategy
    ids; the agent serializes each result with the first that can hold it
    (:mod:`endpoint_agent.result_encoding`). With an ``Idempotency-Key``, a retry answers the
    same ids.
    """
    context = context_of(request)
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    raw = await read_body(request, max_bytes=context.settings.max_body_bytes)
    batch = parse_submit(parse_json(raw), max_tasks=context.settings.max_tasks_per_batch)
    queues = context.result_queues
    if batch.create_queue and queues is None:
        raise amqp_not_configured(422)
    endpoint_id = request.path_params["endpoint_id"]
    answer = await queue_batch(
        context,
        caller_of(request),
        endpoint_id,
        SubmitBatch(
            tasks=batch.tasks,
            task_group_id=batch.task_group_id,
            result_strategies=tuple(batch.result_strategies),
        ),
        idempotency_key=key,
        body=raw,
    )
    if batch.create_queue and queues is not None:
        await queues.open(answer["task_group_id"])
    return JSONResponse(submit_answer(str(uuid.uuid4()), endpoint_id, batch, answer))


routes = [
    Route("/v3/functions", register_function, methods=["POST"]),
    Route("/v3/endpoints", register_endpoint, methods=["POST"]),
    Route("/v3/endpoints/{endpoint_id}", update_endpoint, methods=["PUT"]),
    Route("/v3/endpoints/{endpoint_id}/lock", lock_endpoint, methods=["POST"]),
    Route("/v3/endpoints/{endpoint_id}/allowed_functions", get_allowed_functions, methods=["GET"]),
    Route("/v3/endpoints/{endpoint_id}/submit", submit, methods=["POST"]),
]
