"""The dashboard's routes: its page and assets, sign-in and sign-out, and the JSON it reads.

::

    GET  /dashboard                          the page (signs in when there is no session)
    GET  /dashboard/static/{name}            its script and style sheet
    POST /dashboard/sign-in                  {"token"}: opens a session, sets the cookie
    GET  /dashboard/sign-in?code=            a one-time link: opens a session, then /dashboard
    POST /dashboard/sign-out                 closes the session (CSRF-checked)
    GET  /dashboard/api/me                   {"user", "csrf"}
    GET  /dashboard/api/snapshot             one snapshot (web_service.dashboard.snapshot)
    GET  /dashboard/api/events               server-sent events: a snapshot every second
    GET  /dashboard/api/tasks/{task_id}      the task as /v1 shows it, with attempts and agent
    POST /dashboard/api/tasks/{task_id}/cancel   as /v1 cancels it (CSRF-checked)
    POST /dashboard/api/codes                a one-time sign-in code; takes a Bearer API token

Sessions, cookies and the CSRF checks are :mod:`web_service.dashboard.sessions`. Every
``/dashboard/api`` route but ``codes`` needs a session, and a request is then the signed-in
user's exactly as a ``/v1`` request with their token would be: their rate limit, and the
``/v1`` handlers and stores decide what they may see and cancel.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from sdk.messages import stored
from service_common.tokens import bearer_token, hash_token
from web_service.accounts import TOKEN_PREFIX, Caller
from web_service.context import AppContext, context_of
from web_service.dashboard.sessions import (
    COOKIE_PATH,
    SESSION_COOKIE,
    SESSION_TTL_S,
    DashboardSessions,
    Session,
    check_csrf,
    check_same_origin,
)
from web_service.dashboard.snapshot import Snapshots
from web_service.errors import bad_request, not_found, retry_later, unauthorized
from web_service.json_response import JSONResponse
from web_service.routes import tasks as routes_tasks
from web_service.routes.bodies import read_json
from web_service.taskstore.tasks import read_task

__all__ = ["routes"]

EVENT_INTERVAL_S = 1.0
"""The page gets at most one snapshot a second."""
STREAM_S = 25.0
"""An event stream ends after this long and the browser reconnects (``retry``): a server
that is stopping waits for open responses, and this keeps a dashboard from holding it up
longer than a ``/v1`` long poll (at most 30 s) would."""
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _asset(name: str) -> bytes:
    return files("web_service.dashboard").joinpath("static", name).read_bytes()


def _sessions(context: AppContext) -> DashboardSessions:
    return DashboardSessions(context.redis, context.keys)


def _set_cookie(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=SESSION_TTL_S, path=COOKIE_PATH, httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip


async def signed_in(request: Request, *, limited: bool = True) -> Session:
    """The request's live session, its user set as the caller; else 401. A session whose API
    token was revoked is closed here. ``limited``: counts against the user's rate limit."""
    context = context_of(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = await _sessions(context).get(cookie)
    if session is None:
        raise unauthorized("not signed in to the dashboard")
    if session.token_hash and await context.auth.caller_for_hash(session.token_hash) is None:
        await _sessions(context).close(cookie or "")
        raise unauthorized("the API token of this session was revoked")
    if limited:
        wait_s = context.limiter.acquire(session.user_id)
        if wait_s > 0:
            raise retry_later(429, "RATE_LIMITED", "too many requests; slow down", wait_s)
    request.state.caller = session.caller
    return session


async def page(_request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html", headers=PAGE_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise not_found("asset", name)
    return Response(_asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)


async def sign_in(request: Request) -> JSONResponse:
    """``POST /dashboard/sign-in`` ``{"token"}``: 200 ``{"user"}`` with the session cookie."""
    check_same_origin(request)
    context = context_of(request)
    body = await read_json(request, max_bytes=64 * 1024)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise bad_request('send {"token": "<API token>"}')
    caller = await context.auth.authenticate(f"Bearer {token}")
    token_hash = hash_token(token) if token.startswith(TOKEN_PREFIX) else ""
    cookie, session = await _sessions(context).open(caller, token_hash)
    response = JSONResponse({"user": session.user_name})
    _set_cookie(response, request, cookie)
    return response


async def sign_in_link(request: Request) -> Response:
    """``GET /dashboard/sign-in?code=``: a good code opens a session; either way the browser
    goes on to ``/dashboard`` (which asks for a token when the code was not good)."""
    code = request.query_params.get("code", "")
    redeemed = await _sessions(context_of(request)).redeem_code(code) if code else None
    response = RedirectResponse("/dashboard", status_code=303, headers=PAGE_HEADERS)
    if redeemed is not None:
        caller, token_hash = redeemed
        cookie, _ = await _sessions(context_of(request)).open(caller, token_hash)
        _set_cookie(response, request, cookie)
    return response


async def sign_out(request: Request) -> JSONResponse:
    session = await signed_in(request)
    check_csrf(request, session)
    await _sessions(context_of(request)).close(request.cookies.get(SESSION_COOKIE, ""))
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")  # fmt: skip
    return response


async def me(request: Request) -> JSONResponse:
    session = await signed_in(request)
    return JSONResponse({"user": session.user_name, "csrf": session.csrf},
                        headers={"cache-control": "no-store"})  # fmt: skip


async def snapshot(request: Request) -> JSONResponse:
    session = await signed_in(request)
    body = await Snapshots(context_of(request), session.caller).snapshot()
    return JSONResponse(body, headers={"cache-control": "no-store"})


async def events(request: Request) -> StreamingResponse:
    """``GET /dashboard/api/events``: ``text/event-stream`` of snapshots.

    Contract: one ``data:`` event (a whole snapshot, never a diff) as soon as the stream
    opens, then one every :data:`EVENT_INTERVAL_S`; the server holds one snapshot per
    stream, whatever the stream's age. After :data:`STREAM_S` the stream ends and the
    browser reconnects a second later; when the session has ended, a ``signed-out`` event
    is sent instead and the stream ends.
    """
    session = await signed_in(request)
    context = context_of(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    snapshots = Snapshots(context, session.caller)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {round(EVENT_INTERVAL_S * 1000)}\n\n"
        started = time.monotonic()
        while time.monotonic() - started < STREAM_S:
            if await _sessions(context).get(cookie) is None:
                yield "event: signed-out\ndata: {}\n\n"
                return
            body = json.dumps(await snapshots.snapshot(), separators=(",", ":"))
            yield f"data: {body}\n\n"
            await asyncio.sleep(EVENT_INTERVAL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def task(request: Request) -> JSONResponse:
    """``GET /dashboard/api/tasks/{task_id}``: ``/v1``'s TaskInfo plus ``attempts`` and
    ``agent``; 404 when it is not the user's."""
    session = await signed_in(request)
    context = context_of(request)
    task_id = request.path_params["task_id"]
    info = await read_task(context.redis, context.keys, session.user_id, task_id)
    if info is None:
        raise not_found("task", task_id)
    attempts, agent = await context.redis.hmget(
        context.keys.task(task_id), stored("attempts", "agent")
    )
    return JSONResponse({**info, "attempts": int(attempts or 0), "agent": agent},
                        headers={"cache-control": "no-store"})  # fmt: skip


async def cancel(request: Request) -> JSONResponse:
    """``POST /dashboard/api/tasks/{task_id}/cancel``: what ``POST /v1/tasks/{id}/cancel``
    answers, after the CSRF checks."""
    session = await signed_in(request)
    check_csrf(request, session)
    return await routes_tasks.cancel_task(request)


async def issue_code(request: Request) -> JSONResponse:
    """``POST /dashboard/api/codes`` with ``Authorization: Bearer <API token>``:
    ``{"code", "path"}``, ``path`` the one-time sign-in link's path. No cookie is read, so
    a cross-site page cannot call it (it cannot set that header without CORS)."""
    context = context_of(request)
    authorization = request.headers.get("authorization")
    caller: Caller = await context.auth.authenticate(authorization)
    token = bearer_token(authorization) or ""
    token_hash = hash_token(token) if token.startswith(TOKEN_PREFIX) else ""
    code = await _sessions(context).issue_code(caller, token_hash)
    return JSONResponse({"code": code, "path": f"/dashboard/sign-in?code={code}"})


routes = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/static/{name}", asset, methods=["GET"]),
    Route("/dashboard/sign-in", sign_in, methods=["POST"]),
    Route("/dashboard/sign-in", sign_in_link, methods=["GET"]),
    Route("/dashboard/sign-out", sign_out, methods=["POST"]),
    Route("/dashboard/api/me", me, methods=["GET"]),
    Route("/dashboard/api/snapshot", snapshot, methods=["GET"]),
    Route("/dashboard/api/events", events, methods=["GET"]),
    Route("/dashboard/api/tasks/{task_id}", task, methods=["GET"]),
    Route("/dashboard/api/tasks/{task_id}/cancel", cancel, methods=["POST"]),
    Route("/dashboard/api/codes", issue_code, methods=["POST"]),
]
