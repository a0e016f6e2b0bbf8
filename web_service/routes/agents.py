"""The routes an endpoint's agents reach, through the ws service's gateway: today one,
``GET /v1/endpoint_session``.

They are authenticated by an endpoint credential, never a user's token (see
:mod:`web_service.middleware.auth`), and answer only about the credential's own endpoint.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from service_common.tokens import ENDPOINT_SESSION_PATH
from web_service.json_response import JSONResponse
from web_service.middleware.auth import endpoint_of

__all__ = ["routes"]


async def endpoint_session(request: Request) -> JSONResponse:
    """``GET /v1/endpoint_session``: the endpoint the credential opens, as the gateway needs
    it when an agent connects: ``endpoint_id``, ``name``, ``owner_id``, ``allowed_functions``
    (empty: any function) and ``credential_prefix`` / ``credential_issued_at`` (which of the
    endpoint's credentials this is, for the gateway's logs).

    401 for a user's token and for an unknown, rotated, revoked or deleted endpoint's
    credential. The answer may be up to ``catalog_cache_s`` old; whether the credential is
    live is checked in SQL on every call.
    """
    record = endpoint_of(request)
    return JSONResponse(
        {
            "endpoint_id": record.id,
            "name": record.name,
            "owner_id": record.owner_id,
            "allowed_functions": sorted(record.allowed_functions),
            "credential_prefix": record.credential_prefix,
            "credential_issued_at": record.credential_issued_at,
        }
    )


routes = [Route(ENDPOINT_SESSION_PATH, endpoint_session, methods=["GET"])]
