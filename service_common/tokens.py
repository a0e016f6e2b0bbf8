"""Bearer tokens: read from an ``Authorization`` header and hashed, one way in every service.

Two kinds of secret travel as bearer tokens, told apart by their prefix so that one put in
the other's place is refused before any lookup: a user's API token (``fxb_...``, issued by
``fxbroker user``) and an endpoint credential (``fxep_...``, issued when an endpoint is
registered), which lets an agent serve that one endpoint and call nothing else.
"""

from __future__ import annotations

import hashlib

BEARER = "bearer"
ENDPOINT_CREDENTIAL_PREFIX = "fxep_"
"""How every endpoint credential starts (a user's API token starts with ``fxb_``)."""
ENDPOINT_SESSION_PATH = "/v1/endpoint_session"
"""The one web service route an endpoint credential may call: which endpoint it opens, asked
by the ws service's gateway when an agent connects. It refuses every user token."""


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


def is_endpoint_credential(token: str) -> bool:
    """Whether ``token`` has the form of an endpoint credential (not whether it is valid)."""
    return token.startswith(ENDPOINT_CREDENTIAL_PREFIX)
