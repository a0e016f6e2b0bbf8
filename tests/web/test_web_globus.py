"""Globus Auth access tokens, checked by introspection through globus-sdk's own fixtures.

``responses`` intercepts every HTTP call globus-sdk makes, so nothing reaches the network.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import responses
from globus_sdk.testing import RegisteredResponse, load_response

from web_service.accounts import create_user
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import assert_error, in_process_client

CLIENT_ID = str(uuid.uuid4())
INTROSPECT = "/v2/oauth2/token/introspect"


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as requests_mock:
        yield requests_mock


def introspection(**fields: Any) -> RegisteredResponse:
    body = {
        "active": True,
        "sub": str(uuid.uuid4()),
        "username": "kingfish@globus.org",
        "aud": ["auth.globus.org", CLIENT_ID],
        "exp": int(time.time()) + 3600,
        "client_id": str(uuid.uuid4()),
        **fields,
    }
    return RegisteredResponse(service="auth", path=INTROSPECT, method="POST", json=body)


@pytest.fixture
def globus_settings(web_settings: WebSettings) -> WebSettings:
    return replace(web_settings, globus_client_id=CLIENT_ID, globus_client_secret="s3cret")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_globus_identity_becomes_a_user_on_first_sight(
    globus_settings: WebSettings, mock: responses.RequestsMock
) -> None:
    identity = str(uuid.uuid4())
    load_response(introspection(sub=identity, username="ada@example.org"), requests_mock=mock)
    async with in_process_client(create_app(globus_settings)) as client:
        first = (await client.get("/v1/whoami", headers=bearer("globus-token-1"))).json()
        assert first["name"] == "ada@example.org"
        again = (await client.get("/v1/whoami", headers=bearer("globus-token-1"))).json()
        assert again == first
        calls = [call for call in mock.calls if INTROSPECT in str(call.request.url)]
        assert len(calls) == 1  # cached for the token's lifetime
        assert "globus-token-1" in str(calls[0].request.body)
        # another token of the same identity is the same user
        second = (await client.get("/v1/whoami", headers=bearer("globus-token-2"))).json()
        assert second == first


async def test_fxbroker_tokens_still_work_beside_globus(
    globus_settings: WebSettings, mock: responses.RequestsMock
) -> None:
    _, token = await create_user(globus_settings.database_url, "local")
    async with in_process_client(create_app(globus_settings)) as client:
        assert (await client.get("/v1/whoami", headers=bearer(token))).json()["name"] == "local"
    assert len(mock.calls) == 0


async def test_an_endpoint_credential_is_refused_without_asking_globus(
    globus_settings: WebSettings, mock: responses.RequestsMock
) -> None:
    _, token = await create_user(globus_settings.database_url, "local")
    async with in_process_client(create_app(globus_settings)) as client:
        registered = await client.post("/v1/endpoints", json={"name": "gpu"}, headers=bearer(token))
        credential = registered.json()["credential"]
        response = await client.get("/v1/whoami", headers=bearer(credential))
        assert "endpoint credential" in assert_error(response, 401, "UNAUTHORIZED")["message"]
        session = await client.get("/v1/endpoint_session", headers=bearer(credential))
        assert session.json()["endpoint_id"] == registered.json()["endpoint_id"]
    assert len(mock.calls) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"active": False},
        {"aud": ["auth.globus.org", "someone-else"]},
        {"exp": 1_000_000},
        {"username": None},
    ],
)
async def test_tokens_not_for_us_are_401(
    globus_settings: WebSettings, mock: responses.RequestsMock, fields: dict[str, Any]
) -> None:
    load_response(introspection(**fields), requests_mock=mock)
    async with in_process_client(create_app(globus_settings)) as client:
        assert_error(await client.get("/v1/whoami", headers=bearer("tok")), 401, "UNAUTHORIZED")


async def test_globus_failing_is_503_not_500(
    globus_settings: WebSettings, mock: responses.RequestsMock
) -> None:
    load_response(
        RegisteredResponse(
            service="auth", path=INTROSPECT, method="POST", status=401, json={"errors": []}
        ),
        requests_mock=mock,
    )
    async with in_process_client(create_app(globus_settings)) as client:
        response = await client.get("/v1/whoami", headers=bearer("tok"))
    assert_error(response, 503, "UNAVAILABLE")


async def test_the_sdks_own_introspection_fixture(
    globus_settings: WebSettings, mock: responses.RequestsMock
) -> None:
    """globus-sdk's canned answer is a token for another client: refused, not crashed."""
    load_response("auth.oauth2_token_introspect", requests_mock=mock)
    async with in_process_client(create_app(globus_settings)) as client:
        response = await client.get("/v1/whoami", headers=bearer("tok"))
    assert_error(response, 401, "UNAUTHORIZED")


async def test_without_globus_a_foreign_token_is_just_unknown(
    client: httpx.AsyncClient, mock: responses.RequestsMock
) -> None:
    assert_error(await client.get("/v1/whoami", headers=bearer("tok")), 401, "UNAUTHORIZED")
    assert len(mock.calls) == 0
