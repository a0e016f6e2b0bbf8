"""Error answers: every client mistake is a 4xx JSON body, every answer has a request id.

The body of an error is ``{"code": "UPPER_SNAKE", "message": "...", "request_id": "..."}``;
the same request id is in the ``x-request-id`` header of every response, so a user can
quote it and an operator can find it in the logs. Codes: ``BAD_REQUEST`` 400,
``UNAUTHORIZED`` 401, ``FORBIDDEN`` (only the owner may do that) / ``FUNCTION_NOT_ALLOWED``
(the endpoint's allow-list refuses the function) 403, ``NOT_FOUND`` / ``FUNCTION_NOT_FOUND`` /
``ENDPOINT_NOT_FOUND`` / ``TASK_NOT_FOUND`` / ``TASK_GROUP_NOT_FOUND`` / ``USER_NOT_FOUND``
404, ``CONFLICT`` 409 (the same Idempotency-Key is being processed; retry after
``Retry-After``),
``FUNCTION_DELETED`` 410, ``PAYLOAD_TOO_LARGE`` 413, ``VALIDATION_ERROR`` /
``IDEMPOTENCY_KEY_REUSED`` 422, ``RATE_LIMITED`` 429 (with ``Retry-After``),
``INTERNAL_ERROR`` 500 (a server fault, logged with its traceback), ``UNAVAILABLE`` 503
(Globus Auth could not be asked about a token) and ``SERVICE_UNAVAILABLE`` 503 with
``Retry-After`` (Redis or SQL is away: see :mod:`web_service.middleware.availability`).
"""

from __future__ import annotations

import http
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_common.errors import ServiceError
from web_service.json_response import JSONResponse

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class ApiError(ServiceError):
    """An answer other than success, raised anywhere below a route."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, code, message, headers)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "VALIDATION_ERROR", message)


def not_found(kind: str, object_id: str) -> ApiError:
    """404 ``<KIND>_NOT_FOUND``: what does not exist and what is not the caller's look alike."""
    return ApiError(404, f"{kind.upper()}_NOT_FOUND", f"no {kind.replace('_', ' ')} {object_id}")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", message)


def retry_later(status: int, code: str, message: str, retry_after_s: float) -> ApiError:
    """An error the client fixes by waiting: ``Retry-After`` says how many whole seconds."""
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(status, code, message, {"retry-after": str(seconds)})


def request_id_of(scope: Scope) -> str:
    state: Mapping[str, Any] = scope.get("state") or {}
    return str(state.get("request_id", ""))


def error_response(exc: ApiError, request_id: str) -> JSONResponse:
    body = {"code": exc.code, "message": exc.message, "request_id": request_id}
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(body, status_code=exc.status, headers=headers)


class RequestIdMiddleware:
    """Gives every HTTP request a fresh id (``request.state.request_id``) and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, request_id_of(request.scope))


def path_methods(request: Request) -> list[str]:
    """Every method the routes at the request's path serve, sorted (``HEAD`` with ``GET``).

    Several routes may share a path, one per method; Starlette's own 405 names the methods
    of the first of them only. Where a literal path and a template both match (``/v1/tasks/
    batch_status``, ``/v1/tasks/{task_id}``), the path is the one with fewer parameters."""
    templates: dict[str, set[str]] = {}
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            templates.setdefault(route.path, set()).update(route.methods or ())
    if not templates:
        return []
    return sorted(templates[min(templates, key=lambda path: path.count("{"))])


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) in our JSON shape; a 405's
    ``Allow`` names every method of the path (RFC 9110), whichever route refused it."""
    assert isinstance(exc, HTTPException)
    try:
        code = http.HTTPStatus(exc.status_code).name
    except ValueError:
        code = f"HTTP_{exc.status_code}"
    response = error_response(
        ApiError(exc.status_code, code, exc.detail), request_id_of(request.scope)
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    if exc.status_code == 405:
        response.headers["allow"] = ", ".join(path_methods(request))
    return response


async def server_error_handler(request: Request, exc: Exception) -> Response:
    """A fault of ours: logged with its traceback; the client sees only the request id."""
    request_id = request_id_of(request.scope)
    logger.error("request %s failed", request_id, exc_info=exc)
    message = "internal error; quote the request id when reporting it"
    return error_response(ApiError(500, "INTERNAL_ERROR", message), request_id)


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    HTTPException: http_error_handler,
    Exception: server_error_handler,
}
