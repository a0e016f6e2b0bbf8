"""Bearer tokens: read from an ``Authorization`` header and hashed, one way in every service."""

from __future__ import annotations

import hashlib

BEARER = "bearer"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    The scheme is matched without regard to case and the token is stripped; a header with
    another scheme, or with no token after the scheme, gives None.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        return None
    return token


def hash_token(token: str) -> str:
    """The sha256 hex digest of a token: how SQL stores it and how caches key it, so a token
    is never kept as given."""
    return hashlib.sha256(token.encode()).hexdigest()
