"""Dashboard sign-ins: server-side sessions in Redis, one-time sign-in codes, CSRF checks.

Why server-side sessions, not signed cookies: signing out, and revoking the API token a
session was opened with, must end it on every web process at once, and a signed value
cannot be taken back. So the cookie holds only a random session id (32 bytes, URL-safe
base64); Redis keeps, under the sha256 of that id (``Keys.dashboard_session``), who it
is, the session's CSRF token and the sha256 of the API token it was opened with, for
:data:`SESSION_TTL_S`. Every request re-checks that token (through the web service's token
cache, so a revoked token ends its sessions within ``auth_cache_s``).

The cookie (:data:`SESSION_COOKIE`) is ``HttpOnly``, ``SameSite=Strict``,
``Path=/dashboard`` and ``Secure`` when the dashboard is served over https. The API token
is sent once, in the body of the sign-in request, and never appears in a URL.

State-changing requests (cancel, sign-out) must carry the session's CSRF token in the
:data:`CSRF_HEADER` header *and* come from the dashboard's own origin: an ``Origin``
header equal to the request's own scheme and host (and ``Sec-Fetch-Site``, when the
browser sends it, ``same-origin``). The sign-in request needs the origin check only.

A one-time sign-in code (``fxbroker dev`` prints a link with one) is 32 random bytes kept
under its sha256 (``Keys.dashboard_code``) for :data:`CODE_TTL_S`; redeeming it deletes it
in the same command (``GETDEL``), so a link works once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass

from starlette.requests import HTTPConnection

from sdk.keys import Keys
from service_common.redis_client import RedisClient
from web_service.accounts import Caller
from web_service.errors import ApiError, forbidden

SESSION_COOKIE = "fxb_dashboard"
COOKIE_PATH = "/dashboard"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
"""How long a dashboard sign-in lasts; then the user signs in again."""
CODE_TTL_S = 3600
"""How long a one-time sign-in code waits to be used."""
SECRET_BYTES = 32


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Session:
    """One signed-in browser."""

    user_id: str
    user_name: str
    csrf: str
    token_hash: str
    """The sha256 of the API token it was opened with; empty for a Globus Auth token."""

    @property
    def caller(self) -> Caller:
        return Caller(self.user_id, self.user_name)


class DashboardSessions:
    """Opens, reads and closes sessions and sign-in codes in Redis."""

    def __init__(self, redis: RedisClient, keys: Keys, *, ttl_s: int = SESSION_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def open(self, caller: Caller, token_hash: str) -> tuple[str, Session]:
        """A new session for ``caller``: ``(cookie value, session)``."""
        cookie = secrets.token_urlsafe(SECRET_BYTES)
        session = Session(
            user_id=caller.user_id,
            user_name=caller.name,
            csrf=secrets.token_urlsafe(SECRET_BYTES),
            token_hash=token_hash,
        )
        key = self._keys.dashboard_session(_digest(cookie))
        await self._redis.set(key, json.dumps(asdict(session)), ex=self._ttl_s)
        return cookie, session

    async def get(self, cookie: str | None) -> Session | None:
        """The live session the cookie names, or None."""
        if not cookie:
            return None
        raw = await self._redis.get(self._keys.dashboard_session(_digest(cookie)))
        return Session(**json.loads(raw)) if raw else None

    async def close(self, cookie: str) -> None:
        await self._redis.delete(self._keys.dashboard_session(_digest(cookie)))

    async def issue_code(self, caller: Caller, token_hash: str) -> str:
        """A one-time sign-in code for ``caller``, valid for :data:`CODE_TTL_S`."""
        code = secrets.token_urlsafe(SECRET_BYTES)
        record = {"user_id": caller.user_id, "user_name": caller.name, "token_hash": token_hash}
        await self._redis.set(self._keys.dashboard_code(_digest(code)), json.dumps(record),
                              ex=CODE_TTL_S)  # fmt: skip
        return code

    async def redeem_code(self, code: str) -> tuple[Caller, str] | None:
        """``(caller, token hash)`` the code was issued for, once; None when unknown, used or
        expired."""
        raw = await self._redis.getdel(self._keys.dashboard_code(_digest(code)))
        if not raw:
            return None
        record = json.loads(raw)
        return Caller(record["user_id"], record["user_name"]), record["token_hash"]


def check_same_origin(connection: HTTPConnection) -> None:
    """403 unless the request comes from a page of this origin (see the module docstring)."""
    origin = connection.headers.get("origin")
    own = f"{connection.url.scheme}://{connection.url.netloc}"
    if origin != own:
        raise forbidden("cross-origin request refused")
    fetch_site = connection.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        raise forbidden("cross-site request refused")


def check_csrf(connection: HTTPConnection, session: Session) -> None:
    """403 unless the request carries the session's CSRF token and comes from its origin."""
    check_same_origin(connection)
    sent = connection.headers.get(CSRF_HEADER, "")
    if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError(403, "CSRF", "missing or wrong CSRF token")
