"""Functions: register, list, read, delete, and share (public or with named users).

A function the caller may not use answers 404 ``FUNCTION_NOT_FOUND`` whether or not it
exists. One shared with the caller (or public) may be read, not changed: deleting or
re-sharing it answers 403 ``FORBIDDEN``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from web_service.accounts import Caller
from web_service.context import context_of
from web_service.json_response import JSONResponse
from web_service.middleware.auth import caller_of
from web_service.routes.bodies import (
    parse_function_registration,
    parse_function_sharing,
    parse_page,
    read_json,
)
from web_service.routes.lookups import owned_function, usable_function
from web_service.store.functions import FunctionRecord
from web_service.taskstore.tasks import store_function_code

__all__ = ["routes"]


def function_view(record: FunctionRecord, caller: Caller) -> dict[str, Any]:
    return {
        "function_id": record.id,
        "function_name": record.name,
        "description": record.description,
        "created_at": record.created_at,
        "owner_id": record.owner_id,
        "owned": record.owner_id == caller.user_id,
        "public": record.public,
    }


async def register_function(request: Request) -> JSONResponse:
    """``POST /v1/functions``: store the code in SQL and Redis; ``{"function_id"}``.

    The same code by the same user always answers the same id (and revives it if deleted).
    """
    context = context_of(request)
    caller = caller_of(request)
    spec = parse_function_registration(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    function_id = await context.functions.register(
        caller.user_id, name=spec.name, description=spec.description, code=spec.code
    )
    await store_function_code(context.redis, context.keys, function_id, spec.code)
    return JSONResponse({"function_id": function_id})


async def list_functions(request: Request) -> JSONResponse:
    """``GET /v1/functions?limit&offset``: the caller's functions and those shared with them."""
    context = context_of(request)
    caller = caller_of(request)
    page = parse_page(request.query_params)
    records = await context.functions.list_for(caller.user_id, limit=page.limit, offset=page.offset)
    return JSONResponse({"functions": [function_view(record, caller) for record in records]})


async def get_function(request: Request) -> JSONResponse:
    """``GET /v1/functions/{function_id}``: metadata, and ``function_code`` for its owner."""
    _, caller, record = await usable_function(request)
    body = function_view(record, caller)
    if record.owner_id == caller.user_id:
        body["function_code"] = record.code
    return JSONResponse(body)


async def delete_function(request: Request) -> JSONResponse:
    """``DELETE /v1/functions/{function_id}``: new submissions of it then answer 410.

    Tasks already queued still run: the code stays where agents fetch it.
    """
    context, _, record = await owned_function(request)
    await context.functions.delete(record.id)
    return JSONResponse({"function_id": record.id, "deleted": True})


async def get_sharing(request: Request) -> JSONResponse:
    """``GET /v1/functions/{function_id}/sharing``: ``{"public", "users"}`` (owner only)."""
    context, _, record = await owned_function(request)
    public, users = await context.functions.sharing(record.id)
    return JSONResponse({"function_id": record.id, "public": public, "users": users})


async def put_sharing(request: Request) -> JSONResponse:
    """``PUT /v1/functions/{function_id}/sharing`` ``{"public", "users"}``: replaces both.

    Users are named; an unknown name answers 404 ``USER_NOT_FOUND`` and changes nothing.
    """
    context, caller, record = await owned_function(request)
    public, names = parse_function_sharing(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    await context.functions.set_sharing(
        record.id, public=public, names=names, owner_id=caller.user_id
    )
    _, users = await context.functions.sharing(record.id)
    return JSONResponse({"function_id": record.id, "public": public, "users": users})


routes = [
    Route("/v1/functions", register_function, methods=["POST"]),
    Route("/v1/functions", list_functions, methods=["GET"]),
    Route("/v1/functions/{function_id}", get_function, methods=["GET"]),
    Route("/v1/functions/{function_id}", delete_function, methods=["DELETE"]),
    Route("/v1/functions/{function_id}/sharing", get_sharing, methods=["GET"]),
    Route("/v1/functions/{function_id}/sharing", put_sharing, methods=["PUT"]),
]
