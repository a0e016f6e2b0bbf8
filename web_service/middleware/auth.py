"""Bearer-token authentication and the per-user rate limit of every ``/v1`` request.

fxbroker's own tokens (``fxb_...``) are looked up by their sha256 among the tokens not
revoked; who a token belongs to is cached in process for ``auth_cache_s``, so a revoked token
stops working within that many seconds on every web process. Unknown tokens are not cached:
they always cost a query. When Globus Auth is configured, any other bearer token is checked
by :class:`~web_service.middleware.globus_auth.GlobusIntrospector`.

``/healthz``, ``/readyz``, ``/metrics`` and ``/v1/openapi.json`` need no token (operators
keep ``/metrics`` off the public network); every other route under ``/v1/`` does.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from sdk.wire import API
from service_common.cache import LRUCache
from service_common.tokens import bearer_token, hash_token
from web_service.accounts import TOKEN_PREFIX, Caller
from web_service.context import context_of
from web_service.errors import ApiError, error_response, request_id_of, retry_later, unauthorized
from web_service.middleware.globus_auth import GlobusIntrospector
from web_service.store.models import Token, User

__all__ = ["AuthMiddleware", "Caller", "TokenAuthenticator", "caller_of"]

AUTH_CACHE_ITEMS = 10_000
PROTECTED_PREFIX = f"{API}/"
PUBLIC_PATHS = frozenset({f"{API}/openapi.json"})


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
        if self._globus is not None and not token.startswith(TOKEN_PREFIX):
            return await self._globus.authenticate(token)
        caller = await self._lookup(hash_token(token))
        if caller is None:
            raise unauthorized("unknown or revoked token")
        return caller

    async def _lookup(self, token_hash: str) -> Caller | None:
        cached = self._cache.get(token_hash)
        if cached is not None:
            return cached
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(User.id, User.name)
                    .join(Token, Token.user_id == User.id)
                    .where(Token.token_hash == token_hash, Token.revoked_at.is_(None))
                )
            ).one_or_none()
        if row is None:
            return None
        caller = Caller(row.id, row.name)
        self._cache.put(token_hash, caller)
        return caller


class AuthMiddleware:
    """Lets a ``/v1/`` request through only with a valid token and within the caller's rate.

    Sets ``state.caller``. Unauthenticated requests are refused before they count.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PROTECTED_PREFIX) or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        context = context_of(connection)
        try:
            caller = await context.auth.authenticate(connection.headers.get("authorization"))
            wait_s = context.limiter.acquire(caller.user_id)
            if wait_s > 0:
                raise retry_later(429, "RATE_LIMITED", "too many requests; slow down", wait_s)
        except ApiError as exc:
            await error_response(exc, request_id_of(scope))(scope, receive, send)
            return
        scope["state"]["caller"] = caller
        await self.app(scope, receive, send)


def caller_of(connection: HTTPConnection) -> Caller:
    caller = connection.state.caller
    if not isinstance(caller, Caller):
        raise RuntimeError("route is outside the authenticated prefix")
    return caller
