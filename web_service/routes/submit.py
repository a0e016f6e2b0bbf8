"""Submitting a batch of tasks to an endpoint: the hot path.

Checks, each answering 4xx before anything is queued: the body (413, 400, 422), the
``Idempotency-Key`` header (422), the endpoint is usable by the caller (404
``ENDPOINT_NOT_FOUND``), every function is usable by the caller (404 ``FUNCTION_NOT_FOUND``
naming the ids) and not deleted (410 ``FUNCTION_DELETED``), the endpoint's allow-list admits
every function (403 ``FUNCTION_NOT_ALLOWED``), a given task group is not someone else's (404
``TASK_GROUP_NOT_FOUND``).

Cost once the caches are warm: one Redis pipeline round trip, plus one SQL statement when
the batch opens a new task group, plus one Redis round trip when an ``Idempotency-Key`` is
sent with a new group or to a Redis Cluster (on one Redis, a batch into an existing group
claims its key in the same round trip as its writes). Nothing per task. With an
``Idempotency-Key``, the ids are chosen before the claim and kept in it, so a retry after a
failure in the middle of queueing queues the same ids again and runs nothing twice
(:mod:`web_service.taskstore.idempotency`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from sdk.messages import SubmitResponse
from service_common.lua import is_cluster
from web_service.accounts import Caller
from web_service.context import AppContext, context_of
from web_service.errors import ApiError, not_found
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.routes.bodies import SubmitBatch, parse_json, parse_submit, read_body
from web_service.store.functions import SubmitCheck
from web_service.store.models import new_id
from web_service.taskstore import idempotency
from web_service.taskstore.tasks import enqueue, new_task_ids

__all__ = ["queue_batch", "routes"]

MAX_IDS_NAMED = 10


def _named(ids: list[str]) -> str:
    return ", ".join(ids[:MAX_IDS_NAMED])


async def submit(request: Request) -> JSONResponse:
    """``POST /v1/endpoints/{endpoint_id}/submit``: queue a batch; task ids in order.

    With an ``Idempotency-Key`` header, a retry of the same request answers the same ids
    and queues nothing (see :mod:`web_service.taskstore.idempotency`).
    """
    context = context_of(request)
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    raw = await read_body(request, max_bytes=context.settings.max_body_bytes)
    batch = parse_submit(parse_json(raw), max_tasks=context.settings.max_tasks_per_batch)
    response = await queue_batch(
        context,
        caller_of(request),
        request.path_params["endpoint_id"],
        batch,
        idempotency_key=key,
        body=raw,
    )
    return JSONResponse(response)


async def queue_batch(
    context: AppContext,
    caller: Caller,
    endpoint_id: str,
    batch: SubmitBatch,
    *,
    idempotency_key: str | None,
    body: bytes,
) -> SubmitResponse:
    """Check ``batch`` and queue it on ``endpoint_id`` for ``caller``: every submit route's
    core (``/v1`` and the Globus Compute ``/v3`` one), with the checks and costs above.

    ``body`` is the request's exact bytes: with ``idempotency_key``, a retry of the same body
    answers the first answer and queues nothing.
    """
    key = idempotency_key
    endpoint = await context.endpoints.get(caller.user_id, endpoint_id)
    if endpoint is None:
        raise not_found("endpoint", endpoint_id)
    function_ids = list(dict.fromkeys(task["function_id"] for task in batch.tasks))
    check = await context.functions.check_submit(caller.user_id, function_ids)
    if check.missing:
        raise not_found("function", _named(check.missing))
    if check.deleted:
        raise ApiError(
            410, "FUNCTION_DELETED", f"these functions were deleted: {_named(check.deleted)}"
        )
    refused = [function_id for function_id in function_ids if not endpoint.allows(function_id)]
    if refused:
        raise ApiError(
            403,
            "FUNCTION_NOT_ALLOWED",
            f"endpoint {endpoint_id} does not run these functions: {_named(refused)}",
        )
    plan: SubmitResponse = {
        "task_group_id": batch.task_group_id or new_id(),
        "task_ids": new_task_ids(len(batch.tasks)),
    }
    retry = False
    redis_key = fingerprint = ""
    ttl_s = context.settings.idempotency_ttl_s
    # On one Redis, a batch into a group that exists claims its key in the same script call
    # as its writes (one round trip, not two). A new group's row is written only once the
    # key is claimed, so a retry answered from the key leaves no empty group behind.
    fold = key is not None and batch.task_group_id is not None and not is_cluster(context.redis)
    if key is not None:
        redis_key = context.keys.idempotency(caller.user_id, key)
        fingerprint = idempotency.fingerprint(endpoint_id, body)
    if key is not None and not fold:
        claimed = await idempotency.claim(context.redis, redis_key, fingerprint, plan, ttl_s=ttl_s)
        if claimed.answer is not None:
            return claimed.answer
        plan, retry = claimed.plan, claimed.retry
    try:
        task_group_id = await context.task_groups.claim(
            caller.user_id, plan["task_group_id"], new=batch.task_group_id is None and not retry
        )
        if task_group_id is None:
            raise not_found("task_group", str(batch.task_group_id))
        found = await _enqueue(context, caller, endpoint_id, batch, task_group_id, plan, check,
                               claim=fold, retry=retry, fingerprint=fingerprint,
                               redis_key=redis_key)  # fmt: skip
        if found is not None:  # the key was held already: nothing was queued
            claimed = await idempotency.held(
                context.redis, redis_key, fingerprint, found, ttl_s=ttl_s
            )
            if claimed.answer is not None:
                return claimed.answer
            plan, retry = claimed.plan, True
            await _enqueue(context, caller, endpoint_id, batch, task_group_id, plan, check,
                           retry=True, fingerprint=fingerprint, redis_key=redis_key)  # fmt: skip
    except BaseException:
        if key is not None:
            await idempotency.abandon(context.redis, redis_key, fingerprint, plan, ttl_s=ttl_s)
        raise
    context.metrics.tasks_submitted.inc(len(batch.tasks))
    return plan


async def _enqueue(
    context: AppContext,
    caller: Caller,
    endpoint_id: str,
    batch: SubmitBatch,
    task_group_id: str,
    plan: SubmitResponse,
    check: SubmitCheck,
    *,
    fingerprint: str,
    redis_key: str,
    claim: bool = False,
    retry: bool = False,
) -> str | None:
    """Queue ``plan``'s tasks; with a key (``redis_key``), leave the answer in its record, and
    with ``claim`` claim it first in the same round trip (the record found instead, if any)."""
    ttl_s = context.settings.idempotency_ttl_s
    answer = idempotency.answered(fingerprint, plan)
    return await enqueue(
        context.redis,
        context.keys,
        user_id=caller.user_id,
        endpoint_id=endpoint_id,
        task_group_id=task_group_id,
        tasks=batch.tasks,
        task_ids=plan["task_ids"],
        codes=check.codes,
        result_ttl_s=context.settings.result_ttl_s,
        result_strategies=batch.result_strategies,
        remember=(redis_key, answer, ttl_s) if redis_key else None,
        retry=retry,
        claim=(redis_key, idempotency.underway(fingerprint, plan), ttl_s) if claim else None,
    )


routes = [Route("/v1/endpoints/{endpoint_id}/submit", submit, methods=["POST"])]
