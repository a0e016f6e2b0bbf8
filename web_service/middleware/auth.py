"""Bearer-token authentication and the per-user rate limit of every ``/v1`` request, and of
the Globus Compute routes under ``/v2`` and ``/v3`` (the same users, tokens and limits).

fxbroker's own tokens (``fxb_...``) are looked up by their sha256 among the tokens not
revoked; who a token belongs to is cached in process for ``auth_cache_s``, so a revoked token
stops working within that many seconds on every web process. Unknown tokens are not cached:
they always cost a query. When Globus Auth is configured, any other bearer token is checked
by :class:`~web_service.middleware.globus_auth.GlobusIntrospector`.

``/healthz``, ``/readyz``, ``/metrics``, ``/v1/openapi.json``, ``/v2/version`` and the
OAuth2 token routes ``/v2/oauth2/token`` and ``/v2/oauth2/token/revoke`` (which check their
own client credentials) need no token (operators keep ``/metrics`` off the public network);
every other route under ``/v1/``, ``/v2/`` and ``/v3/`` does. A token exchanged for client
credentials is refused once it expired.

Scope: ``/v1/endpoint_session`` (the agents' route) takes only an endpoint credential
(``fxep_...``), checked in SQL on every request, never cached here; every other route refuses
one, by its prefix, before any lookup (and before Globus Auth would be asked). A user's token
on the agents' route is refused the same way. The rate limit of an agent's request counts
against its endpoint.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from sdk.wire import API
from service_common.cache import LRUCache
from service_common.tokens import (
    ENDPOINT_SESSION_PATH,
    bearer_token,
    hash_token,
    is_endpoint_credential,
)
from web_service.accounts import TOKEN_PREFIX, Caller
from web_service.client_credentials import is_live
from web_service.context import context_of
from web_service.errors import ApiError, error_response, request_id_of, retry_later, unauthorized
from web_service.middleware.globus_auth import GlobusIntrospector
from web_service.store.endpoints import EndpointCatalog, EndpointRecord
from web_service.store.models import Token, User, utcnow

__all__ = [
    "AuthMiddleware",
    "Caller",
    "TokenAuthenticator",
    "authenticate_agent",
    "caller_of",
    "endpoint_of",
]

AUTH_CACHE_ITEMS = 10_000
PROTECTED_PREFIXES = (f"{API}/", "/v2/", "/v3/")
PUBLIC_PATHS = frozenset(
    {f"{API}/openapi.json", "/v2/version", "/v2/oauth2/token", "/v2/oauth2/token/revoke"}
)
AGENT_PATHS = frozenset({ENDPOINT_SESSION_PATH})
"""The routes an endpoint credential opens, and that refuse user tokens."""


class TokenAuthenticator:
    """Checks bearer tokens: fxbroker's own, and Globus ones when ``globus`` is given."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_s: float,
        globus: GlobusIntrospector | None = None,
    ) -> None:
        self._sessions = sessions
        self._globus = globus
        self._cache: LRUCache[str, Caller] = LRUCache(max_items=AUTH_CACHE_ITEMS, ttl_s=cache_s)

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization: Bearer <token>`` header names; else 401."""
        if not authorization:
            raise unauthorized("missing Authorization header; send 'Bearer <token>'")
        token = bearer_token(authorization)
        if token is None:
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        if is_endpoint_credential(token):
            raise unauthorized(
                "an endpoint credential authenticates that endpoint's agents only; "
                "user routes need an API token"
            )
        if self._globus is not None and not token.startswith(TOKEN_PREFIX):
            return await self._globus.authenticate(token)
        caller = await self._lookup(hash_token(token))
        if caller is None:
            raise unauthorized("unknown or revoked token")
        return caller

    async def caller_for_hash(self, token_hash: str) -> Caller | None:
        """Whose live token has this sha256, or None (revoked, expired, unknown); cached as
        :meth:`authenticate` is. The dashboard re-checks its sessions' tokens with it."""
        return await self._lookup(token_hash)

    async def _lookup(self, token_hash: str) -> Caller | None:
        cached = self._cache.get(token_hash)
        if cached is not None:
            return cached
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(User.id, User.name, Token.expires_at)
                    .join(Token, Token.user_id == User.id)
                    .where(Token.token_hash == token_hash, Token.revoked_at.is_(None))
                )
            ).one_or_none()
        if row is None or not is_live(row.expires_at, utcnow()):
            return None
        caller = Caller(row.id, row.name)
        self._cache.put(token_hash, caller)
        return caller


async def authenticate_agent(
    endpoints: EndpointCatalog, authorization: str | None
) -> EndpointRecord:
    """The endpoint whose live credential the ``Authorization: Bearer`` header carries; else
    401 (no header, a user's token, an unknown, rotated or revoked credential, a deleted
    endpoint's)."""
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized("send 'Authorization: Bearer <endpoint credential>'")
    if not is_endpoint_credential(token):
        raise unauthorized("this route takes an endpoint credential, not a user's token")
    record = await endpoints.for_credential(token)
    if record is None:
        raise unauthorized("unknown or revoked endpoint credential")
    return record


class AuthMiddleware:
    """Lets a ``/v1/`` request through only with a valid token and within the caller's rate.

    Sets ``state.caller`` (a user's route) or ``state.endpoint`` (an agent's route).
    Unauthenticated requests are refused before they count.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PROTECTED_PREFIXES) or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        context = context_of(connection)
        authorization = connection.headers.get("authorization")
        try:
            if path in AGENT_PATHS:
                endpoint = await authenticate_agent(context.endpoints, authorization)
                scope["state"]["endpoint"] = endpoint
                rate_key = endpoint.id
            else:
                caller = await context.auth.authenticate(authorization)
                scope["state"]["caller"] = caller
                rate_key = caller.user_id
            wait_s = context.limiter.acquire(rate_key)
            if wait_s > 0:
                raise retry_later(429, "RATE_LIMITED", "too many requests; slow down", wait_s)
        except ApiError as exc:
            await error_response(exc, request_id_of(scope))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def caller_of(connection: HTTPConnection) -> Caller:
    caller = getattr(connection.state, "caller", None)
    if not isinstance(caller, Caller):
        raise RuntimeError("route is outside the authenticated prefix, or an agent's route")
    return caller


def endpoint_of(connection: HTTPConnection) -> EndpointRecord:
    """The endpoint an agent's request was authenticated as (its credential's)."""
    endpoint = getattr(connection.state, "endpoint", None)
    if not isinstance(endpoint, EndpointRecord):
        raise RuntimeError("route is not one of AGENT_PATHS")
    return endpoint
