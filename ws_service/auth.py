"""Who is calling, and may they read this task group? Which endpoint does this agent serve?
Asked of the web service over HTTP.

The ws_service holds no SQL and no token table: it forwards the caller's bearer token to
``GET /v1/whoami`` and ``GET /v1/task_groups/{id}``, and an agent's endpoint credential to
``GET /v1/endpoint_session``, and believes the answer. A task group whose tasks are still in
Redis is known to be the caller's without asking: its first task's hash names the user who
submitted it, and the web service puts only its owner's tasks in a group (``group_owner``,
given by the server); any other answer (someone else's, or nothing left in Redis) is still
asked of the web service, which gives the precise refusal. Positive answers are cached for
``cache_s`` per token (hashed, never stored as given), so a reconnect storm or many
subscriptions cost the web service one request per token and group per period; negative
answers are never cached, so a token created a moment ago works at once. A revoked token or
a rotated or revoked credential keeps working here for at most ``cache_s``. A user's token
and an endpoint credential are told apart by their prefix: each is refused in the other's
place without asking the web service.

Errors: the web service's refusals (401 ``UNAUTHORIZED``, 404 ``NOT_FOUND``, ...) are
:class:`sdk.errors.APIError`, as the SDK reads them; a web service that could not answer
raises :class:`WebUnavailable`, a :class:`~service_common.errors.ServiceError`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sdk.errors import APIError
from service_common.cache import LRUCache
from service_common.errors import ServiceError
from service_common.tokens import ENDPOINT_SESSION_PATH, hash_token, is_endpoint_credential

CACHE_ENTRIES_MAX = 10_000
"""Cached answers beyond this many drop the least recently used."""


class WebUnavailable(ServiceError):
    """The web service could not answer (transport error or a 5xx status)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated connection's user, and the token it authenticated with."""

    user_id: str
    name: str
    token: str

    def __repr__(self) -> str:
        return f"Caller(user_id={self.user_id!r}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class EndpointSession:
    """The endpoint an agent's credential opens, as the web service answered for it."""

    endpoint_id: str
    name: str
    owner_id: str
    allowed_functions: frozenset[str]
    """Empty: the endpoint runs any function its users may run."""
    credential_prefix: str
    """The credential's first characters: which of the endpoint's credentials, for logs."""
    credential: str

    def __repr__(self) -> str:
        return (
            f"EndpointSession(endpoint_id={self.endpoint_id!r}, name={self.name!r}, "
            f"credential_prefix={self.credential_prefix!r})"
        )


class Authenticator:
    """Checks tokens and task-group ownership against the web service at ``web_url``.

    ``http`` is an open :class:`httpx.AsyncClient` whose lifetime the caller manages.
    ``group_owner`` answers the user a task group's tasks in Redis belong to (None when it
    cannot tell); without it every group is asked of the web service."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        web_url: str,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
        group_owner: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self._http = http
        self._group_owner = group_owner
        self._web_url = web_url.rstrip("/")
        self._callers: LRUCache[str, Caller] = LRUCache(
            max_items=CACHE_ENTRIES_MAX, ttl_s=cache_s, clock=clock
        )
        self._groups: LRUCache[tuple[str, str], bool] = LRUCache(
            max_items=CACHE_ENTRIES_MAX, ttl_s=cache_s, clock=clock
        )
        self._sessions: LRUCache[str, EndpointSession] = LRUCache(
            max_items=CACHE_ENTRIES_MAX, ttl_s=cache_s, clock=clock
        )

    async def authenticate(self, token: str) -> Caller | None:
        """The caller the token belongs to, or None when the web service answers 401 (or
        the token is an endpoint credential, which is not asked about)."""
        if is_endpoint_credential(token):
            return None
        digest = hash_token(token)
        cached = self._callers.get(digest)
        if cached is not None:
            return cached
        try:
            body = await self._get("/v1/whoami", token)
        except APIError as exc:
            if exc.status == 401:
                return None
            raise
        if not body.get("user_id"):
            raise WebUnavailable("GET /v1/whoami: the answer carries no user_id")
        caller = Caller(user_id=str(body["user_id"]), name=str(body.get("name", "")), token=token)
        self._callers.put(digest, caller)
        return caller

    async def authenticate_endpoint(self, credential: str) -> EndpointSession | None:
        """The endpoint ``credential`` opens, or None: for anything but an endpoint
        credential (not asked about) and when the web service answers 401 (unknown, rotated
        or revoked credential, deleted endpoint). Other refusals raise :class:`APIError`, a
        web service that cannot answer :class:`WebUnavailable`.

        Cost once cached: none; else one ``GET /v1/endpoint_session``."""
        if not is_endpoint_credential(credential):
            return None
        digest = hash_token(credential)
        cached = self._sessions.get(digest)
        if cached is not None:
            return cached
        try:
            body = await self._get(ENDPOINT_SESSION_PATH, credential)
        except APIError as exc:
            if exc.status == 401:
                return None
            raise
        session = _endpoint_session(body, credential)
        self._sessions.put(digest, session)
        return session

    async def check_task_group(self, caller: Caller, task_group_id: str) -> None:
        """Return when ``task_group_id`` is the caller's; raise :class:`APIError` (404
        ``NOT_FOUND`` for someone else's or no group, 401 for a token revoked since) or
        :class:`WebUnavailable` otherwise.

        Cost once cached: none; for a group whose tasks are in Redis, two Redis reads; else
        one ``GET /v1/task_groups/{id}?limit=0``."""
        key = (hash_token(caller.token), task_group_id)
        if self._groups.get(key) is not None:
            return
        if self._group_owner is not None and await self._group_owner(task_group_id) == (
            caller.user_id
        ):
            self._groups.put(key, True)
            return
        await self._get(f"/v1/task_groups/{task_group_id}?limit=0", caller.token)
        self._groups.put(key, True)

    async def _get(self, path: str, token: str) -> dict[str, Any]:
        try:
            response = await self._http.get(
                self._web_url + path, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise WebUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise WebUnavailable(f"GET {path}: HTTP {response.status_code}")
        try:
            body: Any = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            if not isinstance(body, dict):
                body = {}
            raise APIError(
                response.status_code,
                str(body.get("code", "HTTP_ERROR")),
                str(body.get("message", response.reason_phrase)),
                str(body.get("request_id", "")),
            )
        if not isinstance(body, dict):
            raise WebUnavailable(f"GET {path}: the answer is not a JSON object")
        return body


def _endpoint_session(body: dict[str, Any], credential: str) -> EndpointSession:
    """The answer of ``GET /v1/endpoint_session``, checked field by field."""
    fields = ("endpoint_id", "name", "owner_id", "credential_prefix")
    if not all(isinstance(body.get(name), str) and body[name] for name in fields):
        raise WebUnavailable(f"GET {ENDPOINT_SESSION_PATH}: the answer lacks one of {fields}")
    allowed = body.get("allowed_functions")
    if not isinstance(allowed, list) or not all(isinstance(f, str) for f in allowed):
        raise WebUnavailable(f"GET {ENDPOINT_SESSION_PATH}: allowed_functions is not a list")
    return EndpointSession(
        endpoint_id=body["endpoint_id"],
        name=body["name"],
        owner_id=body["owner_id"],
        allowed_functions=frozenset(allowed),
        credential_prefix=body["credential_prefix"],
        credential=credential,
    )
