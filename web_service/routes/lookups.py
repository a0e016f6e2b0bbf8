"""The record a route's path names, checked against the caller, for every route module.

``usable_*`` answers 404 for what the caller may neither own nor use (another user's, never
shared), so a stranger cannot tell it exists; ``owned_*`` answers 403 to a user it was only
shared with. Each returns ``(context, caller, record)``.
"""

from __future__ import annotations

from starlette.requests import Request

from web_service.accounts import Caller
from web_service.context import AppContext, context_of
from web_service.errors import forbidden, not_found
from web_service.middleware.auth import caller_of
from web_service.store.endpoints import EndpointRecord
from web_service.store.functions import FunctionRecord


async def usable_endpoint(request: Request) -> tuple[AppContext, Caller, EndpointRecord]:
    """The endpoint of ``{endpoint_id}`` if the caller owns it or it is shared with them."""
    context, caller = context_of(request), caller_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    record = await context.endpoints.get(caller.user_id, endpoint_id)
    if record is None:
        raise not_found("endpoint", endpoint_id)
    return context, caller, record


async def owned_endpoint(request: Request) -> tuple[AppContext, Caller, EndpointRecord]:
    """The endpoint of ``{endpoint_id}`` if the caller owns it."""
    context, caller, record = await usable_endpoint(request)
    if record.owner_id != caller.user_id:
        raise forbidden("only the endpoint's owner may do that")
    return context, caller, record


async def usable_function(request: Request) -> tuple[AppContext, Caller, FunctionRecord]:
    """The function of ``{function_id}`` if the caller owns it or may use it."""
    context, caller = context_of(request), caller_of(request)
    function_id = request.path_params["function_id"]
    record = await context.functions.get(caller.user_id, function_id)
    if record is None:
        raise not_found("function", function_id)
    return context, caller, record


async def owned_function(request: Request) -> tuple[AppContext, Caller, FunctionRecord]:
    """The function of ``{function_id}`` if the caller owns it."""
    context, caller, record = await usable_function(request)
    if record.owner_id != caller.user_id:
        raise forbidden("only the function's owner may do that")
    return context, caller, record
