"""Bearer-token authentication of every ``/v1`` request.

A token is looked up by its sha256 among the tokens not revoked; who it belongs to is
cached in process for ``auth_cache_s``, so a revoked token stops working within that many
seconds on every web process. Unknown tokens are not cached: they always cost a query.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from web_service.accounts import hash_token
from web_service.cache import LRUCache
from web_service.context import context_of
from web_service.errors import ApiError, error_response, request_id_of, unauthorized
from web_service.models import Token, User

AUTH_CACHE_ITEMS = 10_000
PROTECTED_PREFIX = "/v1/"


@dataclass(frozen=True)
class Caller:
    """The user a request was authenticated as."""

    user_id: str
    name: str


class TokenAuthenticator:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, cache_s: float) -> None:
        self._sessions = sessions
        self._cache: LRUCache[str, Caller] = LRUCache(
            max_items=AUTH_CACHE_ITEMS if cache_s > 0 else 0, ttl_s=cache_s
        )

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization: Bearer <token>`` header names; else 401."""
        if not authorization:
            raise unauthorized("missing Authorization header; send 'Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
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
    """Lets a ``/v1/`` request through only with a valid token; sets ``state.caller``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        try:
            caller = await context_of(connection).auth.authenticate(
                connection.headers.get("authorization")
            )
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
