"""Registering functions and reading them back."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from web_service.auth import caller_of
from web_service.bodies import parse_function_registration, read_json
from web_service.context import context_of
from web_service.errors import not_found
from web_service.queue import store_function_code


async def register_function(request: Request) -> JSONResponse:
    """``POST /v1/functions``: store the code in SQL and Redis; ``{"function_id"}``.

    The same code by the same user always answers the same id.
    """
    context = context_of(request)
    caller = caller_of(request)
    spec = parse_function_registration(
        await read_json(request, max_bytes=context.settings.max_body_bytes)
    )
    function_id = await context.catalog.register_function(
        caller.user_id, name=spec.name, description=spec.description, code=spec.code
    )
    await store_function_code(context.redis, context.keys, function_id, spec.code)
    return JSONResponse({"function_id": function_id})


async def get_function(request: Request) -> JSONResponse:
    """``GET /v1/functions/{function_id}``: the caller's function, else 404."""
    context = context_of(request)
    function_id = request.path_params["function_id"]
    record = await context.catalog.function(caller_of(request).user_id, function_id)
    if record is None:
        raise not_found("function", function_id)
    return JSONResponse(
        {
            "function_id": record.id,
            "function_name": record.name,
            "description": record.description,
            "created_at": record.created_at,
        }
    )


routes = [
    Route("/v1/functions", register_function, methods=["POST"]),
    Route("/v1/functions/{function_id}", get_function, methods=["GET"]),
]
