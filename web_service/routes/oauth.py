"""``POST /v2/oauth2/token``: the OAuth2 client-credentials grant (RFC 6749 §4.4), at the path
``globus_sdk`` posts to when its Auth base URL (``GLOBUS_SDK_SERVICE_URL_AUTH``) is this
service. It is how the Globus Compute SDK, given ``GLOBUS_COMPUTE_CLIENT_ID`` and
``GLOBUS_COMPUTE_CLIENT_SECRET``, logs in as the fxbroker user who minted that pair with
``fxbroker user client-credentials NAME`` (:mod:`web_service.client_credentials`).
``POST /v2/oauth2/token/revoke`` (RFC 7009, ``token=...``) is where that SDK's
``Client.logout()`` revokes the token it was granted: 200 ``{"active": false}`` whether or not
the token was one of the client's (only the client's own are revoked).

The client authenticates with HTTP Basic (``client_id:client_secret``), or with both in the
form body. The answer is Globus Auth's token document: the access token is an fxbroker API
token that expires, its resource server ``funcx_service`` (what that SDK looks up), its scope
the one asked for. Errors are RFC 6749 §5.2's ``{"error", "error_description"}`` beside the
service's own ``{"code", "message", "request_id"}``: 401 ``invalid_client``, 400
``unsupported_grant_type`` / ``invalid_request``. The route needs no bearer token and is
counted against no user's rate limit (it has no user until the pair checks out).
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs, unquote_plus

from starlette.requests import Request
from starlette.routing import Route

from web_service.context import context_of
from web_service.errors import request_id_of
from web_service.json_response import JSONResponse
from web_service.routes.bodies import read_body

__all__ = ["COMPUTE_RESOURCE_SERVER", "COMPUTE_SCOPE", "routes"]

COMPUTE_RESOURCE_SERVER = "funcx_service"
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
"""The scope the Globus Compute SDK asks for (``ComputeScopes.all``)."""
MAX_FORM_BYTES = 16 * 1024


def _oauth_error(request: Request, status: int, error: str, description: str) -> JSONResponse:
    headers = {"cache-control": "no-store"}
    if status == 401:
        headers["www-authenticate"] = 'Basic realm="fxbroker"'
    return JSONResponse(
        {
            "error": error,
            "error_description": description,
            "code": error.upper(),
            "message": description,
            "request_id": request_id_of(request.scope),
        },
        status_code=status,
        headers=headers,
    )


def _basic(authorization: str | None) -> tuple[str, str] | None:
    """``(client_id, secret)`` of an ``Authorization: Basic`` header, or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


async def _form(request: Request) -> dict[str, str] | None:
    """The request's form fields (the first of each), or None when it is not UTF-8."""
    raw = await read_body(request, max_bytes=MAX_FORM_BYTES)
    try:
        return {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        return None


def _client(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """The client id and secret: HTTP Basic, else both in the form."""
    pair = _basic(request.headers.get("authorization"))
    if pair is None and "client_id" in form and "client_secret" in form:
        pair = form["client_id"], form["client_secret"]
    return pair


def _no_client(request: Request) -> JSONResponse:
    return _oauth_error(
        request, 401, "invalid_client", "send the client id and secret (HTTP Basic)"
    )


def _bad_client(request: Request) -> JSONResponse:
    return _oauth_error(
        request, 401, "invalid_client", "unknown, wrong or revoked client credentials"
    )


def _not_a_form(request: Request) -> JSONResponse:
    return _oauth_error(request, 400, "invalid_request", "the body must be a UTF-8 form")


async def token(request: Request) -> JSONResponse:
    """``POST /v2/oauth2/token`` ``grant_type=client_credentials&scope=...``: a token."""
    context = context_of(request)
    form = await _form(request)
    if form is None:
        return _not_a_form(request)
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(
            request, 400, "unsupported_grant_type", "fxbroker grants client_credentials only"
        )
    pair = _client(request, form)
    if pair is None:
        return _no_client(request)
    granted = await context.client_credentials.exchange(*pair)
    if granted is None:
        return _bad_client(request)
    scope = " ".join(dict.fromkeys(form.get("scope", "").split())) or COMPUTE_SCOPE
    return JSONResponse(
        {
            "access_token": granted.token,
            "token_type": "Bearer",
            "expires_in": granted.expires_in_s,
            "resource_server": COMPUTE_RESOURCE_SERVER,
            "scope": scope,
            "state": "_default",
            "other_tokens": [],
        },
        headers={"cache-control": "no-store"},
    )


async def revoke(request: Request) -> JSONResponse:
    """``POST /v2/oauth2/token/revoke`` ``token=...``: revokes the client's own token."""
    context = context_of(request)
    form = await _form(request)
    if form is None:
        return _not_a_form(request)
    if not form.get("token"):  # a malformed request is told so before who sent it is checked
        return _oauth_error(request, 400, "invalid_request", "send the token to revoke as token")
    pair = _client(request, form)
    if pair is None:
        return _no_client(request)
    if not await context.client_credentials.revoke(*pair, form["token"]):
        return _bad_client(request)
    return JSONResponse({"active": False}, headers={"cache-control": "no-store"})


routes = [
    Route("/v2/oauth2/token", token, methods=["POST"]),
    Route("/v2/oauth2/token/revoke", revoke, methods=["POST"]),
]
