"""Globus Auth access tokens as bearer tokens, checked by token introspection.

With ``globus_client_id`` and ``globus_client_secret`` set, a bearer token that is not one of
fxbroker's own (``fxb_...``) is introspected with ``globus-sdk``'s
:class:`~globus_sdk.ConfidentialAppAuthClient`. An active token whose audience holds our
client id names a Globus identity (``sub``); its fxbroker user is created on first sight
(:func:`web_service.accounts.user_for_identity`). The answer is cached in process until the
token's ``exp``, so each token costs one introspection per web process over its lifetime.
A token revoked at Globus keeps working here until it expires (at most its lifetime, which
Globus keeps to hours).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import globus_sdk
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service_common.cache import LRUCache
from service_common.tokens import hash_token
from web_service.accounts import Caller, user_for_identity
from web_service.errors import ApiError, unauthorized

logger = logging.getLogger(__name__)

INTROSPECTION_CACHE_ITEMS = 10_000


class GlobusIntrospector:
    """Turns a Globus access token into the :class:`Caller` it belongs to, or raises 401."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._client_id = client_id
        self._client = globus_sdk.ConfidentialAppAuthClient(client_id, client_secret)
        self._clock = clock
        self._cache: LRUCache[str, tuple[Caller, float]] = LRUCache(
            max_items=INTROSPECTION_CACHE_ITEMS
        )

    async def authenticate(self, token: str) -> Caller:
        """The caller of an active token meant for us; 401 otherwise, 503 if Globus fails."""
        key = hash_token(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        data = await self._introspect(token)
        expires_at = data.get("exp")
        audience = data.get("aud") or []
        if (
            data.get("active") is not True
            or not isinstance(expires_at, int | float)
            or expires_at <= self._clock()
        ):
            raise unauthorized("the Globus token is not active")
        if self._client_id not in audience:
            raise unauthorized("the Globus token was not issued for this service")
        identity_id, username = data.get("sub"), data.get("username")
        if not isinstance(identity_id, str) or not isinstance(username, str) or not username:
            raise unauthorized("the Globus token names no identity")
        async with self._sessions() as session:
            user = await user_for_identity(session, identity_id, username)
            caller = Caller(user.id, user.name)
        self._cache.put(key, (caller, float(expires_at)))
        return caller

    async def _introspect(self, token: str) -> dict[str, Any]:
        try:
            response = await asyncio.to_thread(self._client.oauth2_token_introspect, token)
        except globus_sdk.GlobusAPIError as exc:  # an unknown token is active=false, not this
            logger.warning("Globus Auth introspection failed: %s", exc)
            raise ApiError(503, "UNAVAILABLE", "Globus Auth could not check the token") from exc
        except globus_sdk.NetworkError as exc:
            logger.warning("Globus Auth is unreachable: %s", exc)
            raise ApiError(503, "UNAVAILABLE", "Globus Auth could not be reached") from exc
        data = response.data
        return data if isinstance(data, dict) else {}
