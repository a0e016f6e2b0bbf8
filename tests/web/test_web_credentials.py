"""Endpoint credentials: issued when an endpoint is created, shown once, kept hashed, rotated
and revoked by the owner only; they open ``GET /v1/endpoint_session`` and nothing else, and
no user token opens that route."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Route

from web_service.app import create_app
from web_service.settings import WebSettings
from web_service.store.database import open_engine
from web_service.store.models import Endpoint

from .helpers import ApiUser, assert_error

SESSION = "/v1/endpoint_session"
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v2/version"),
    ("POST", "/v2/oauth2/token"),  # checks its own client credentials (HTTP Basic)
    ("POST", "/v2/oauth2/token/revoke"),  # the same
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def session_of(client: httpx.AsyncClient, credential: str) -> httpx.Response:
    return await client.get(SESSION, headers=bearer(credential))


async def register(user: ApiUser, name: str) -> dict[str, Any]:
    response = await user.post("/v1/endpoints", {"name": name})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def endpoint_row(database_url: str, endpoint_id: str) -> Endpoint:
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        row = await session.scalar(select(Endpoint).where(Endpoint.id == endpoint_id))
    assert row is not None
    return row


async def test_creating_an_endpoint_issues_a_credential_shown_once(alice: ApiUser) -> None:
    created = await register(alice, "gpu")
    credential = created["credential"]
    assert credential.startswith("fxep_") and len(credential) >= 5 + 43  # 256 random bits
    assert not credential.startswith("fxb_")

    found = await register(alice, "gpu")
    assert found["endpoint_id"] == created["endpoint_id"]
    assert "credential" not in found  # finding by name issues nothing and shows nothing

    detail = await alice.get(f"/v1/endpoints/{created['endpoint_id']}")
    assert credential not in detail.text
    assert detail.json()["credential"] == {
        "prefix": credential[:12],
        "issued_at": detail.json()["credential"]["issued_at"],
    }
    listed = await alice.get("/v1/endpoints")
    assert credential not in listed.text
    other = await register(alice, "cpu")
    assert other["credential"] != credential


async def test_the_credential_is_kept_hashed(alice: ApiUser, migrated_database_url: str) -> None:
    created = await register(alice, "gpu")
    credential = created["credential"]
    row = await endpoint_row(migrated_database_url, created["endpoint_id"])
    assert row.credential_hash == hashlib.sha256(credential.encode()).hexdigest()
    assert row.credential_prefix == credential[:12]
    values = [str(getattr(row, column.key)) for column in Endpoint.__table__.columns]
    assert all(credential not in value for value in values)


async def test_the_credential_opens_its_endpoints_session(
    alice: ApiUser, client: httpx.AsyncClient
) -> None:
    created = await register(alice, "gpu")
    eid = created["endpoint_id"]
    allowed = ["00000000-0000-4000-8000-000000000001"]
    await alice.client.put(
        f"/v1/endpoints/{eid}/allowed_functions",
        json={"function_ids": allowed},
        headers=alice.headers,
    )
    response = await session_of(client, created["credential"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "endpoint_id": eid,
        "name": "gpu",
        "owner_id": alice.user_id,
        "allowed_functions": allowed,
        "credential_prefix": created["credential"][:12],
        "credential_issued_at": body["credential_issued_at"],
    }
    detail = (await alice.get(f"/v1/endpoints/{eid}")).json()
    assert body["credential_issued_at"] == detail["credential"]["issued_at"]


async def test_a_user_token_or_no_credential_is_refused_on_the_agents_route(
    alice: ApiUser, client: httpx.AsyncClient
) -> None:
    await register(alice, "gpu")
    response = await session_of(client, alice.token)
    body = assert_error(response, 401, "UNAUTHORIZED")
    assert "endpoint credential" in body["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(await client.get(SESSION), 401, "UNAUTHORIZED")
    assert_error(await session_of(client, "fxep_" + "x" * 43), 401, "UNAUTHORIZED")
    assert_error(await session_of(client, "not-a-token"), 401, "UNAUTHORIZED")


async def test_the_credential_is_refused_on_every_user_route(
    alice: ApiUser, client: httpx.AsyncClient, web_settings: WebSettings
) -> None:
    """Walks every route the app serves: each refuses the credential before doing anything."""
    created = await register(alice, "gpu")
    eid, credential = created["endpoint_id"], created["credential"]
    served = {
        (method, route.path)
        for route in create_app(web_settings).routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    # The dashboard's routes read its session cookie, never an Authorization header; the
    # one that takes a bearer token (a sign-in code) and its sign-in form are checked here.
    cookie_routes = {
        (method, path)
        for method, path in served
        if path.startswith("/dashboard") and path != "/dashboard/api/codes"
    }
    user_routes = served - PUBLIC - {("GET", SESSION)} - cookie_routes
    assert ("POST", "/dashboard/api/codes") in user_routes
    signing_in = await client.post(
        "/dashboard/sign-in", json={"token": credential}, headers={"origin": "http://testserver"}
    )
    assert "endpoint credential" in assert_error(signing_in, 401, "UNAUTHORIZED")["message"]
    assert ("POST", "/v1/endpoints/{endpoint_id}/credential") in user_routes
    for method, template in sorted(user_routes):
        path = (
            template.replace("{endpoint_id}", eid)
            .replace("{function_id}", eid)
            .replace("{task_id}", eid)
            .replace("{task_group_id}", eid)
        )
        response = await client.request(method, path, json={}, headers=bearer(credential))
        body = assert_error(response, 401, "UNAUTHORIZED")
        assert "endpoint credential" in body["message"], (method, path)
    # nothing changed: the credential still opens its session, the endpoint still exists
    assert (await session_of(client, credential)).status_code == 200
    assert (await alice.get(f"/v1/endpoints/{eid}")).status_code == 200


async def test_rotating_replaces_the_credential_at_once(
    alice: ApiUser, client: httpx.AsyncClient
) -> None:
    created = await register(alice, "gpu")
    eid, old = created["endpoint_id"], created["credential"]
    response = await alice.post(f"/v1/endpoints/{eid}/credential")
    assert response.status_code == 200, response.text
    rotated = response.json()
    new = rotated["credential"]
    assert rotated["endpoint_id"] == eid and new.startswith("fxep_") and new != old
    assert_error(await session_of(client, old), 401, "UNAUTHORIZED")
    assert (await session_of(client, new)).json()["endpoint_id"] == eid
    detail = (await alice.get(f"/v1/endpoints/{eid}")).json()
    assert detail["credential"] == {"prefix": new[:12], "issued_at": rotated["issued_at"]}


async def test_revoking_leaves_the_endpoint_without_one_until_rotated(
    alice: ApiUser, client: httpx.AsyncClient, migrated_database_url: str
) -> None:
    created = await register(alice, "gpu")
    eid, credential = created["endpoint_id"], created["credential"]
    revoked = await alice.client.delete(f"/v1/endpoints/{eid}/credential", headers=alice.headers)
    assert revoked.json() == {"endpoint_id": eid, "revoked": True}
    assert_error(await session_of(client, credential), 401, "UNAUTHORIZED")
    again = await alice.client.delete(f"/v1/endpoints/{eid}/credential", headers=alice.headers)
    assert again.json() == {"endpoint_id": eid, "revoked": False}
    assert (await alice.get(f"/v1/endpoints/{eid}")).json()["credential"] is None
    row = await endpoint_row(migrated_database_url, eid)
    assert (row.credential_hash, row.credential_prefix, row.credential_issued_at) == (None,) * 3

    # like an endpoint registered before credentials existed: registering shows nothing,
    # rotating gives it one
    assert "credential" not in await register(alice, "gpu")
    new = (await alice.post(f"/v1/endpoints/{eid}/credential")).json()["credential"]
    assert (await session_of(client, new)).json()["endpoint_id"] == eid
    assert_error(await session_of(client, credential), 401, "UNAUTHORIZED")


async def test_deleting_revokes_and_reviving_issues_a_new_one(
    alice: ApiUser, client: httpx.AsyncClient
) -> None:
    created = await register(alice, "gpu")
    eid, credential = created["endpoint_id"], created["credential"]
    await alice.client.delete(f"/v1/endpoints/{eid}", headers=alice.headers)
    assert_error(await session_of(client, credential), 401, "UNAUTHORIZED")
    revived = await register(alice, "gpu")
    assert revived["endpoint_id"] == eid
    assert revived["credential"] != credential
    assert (await session_of(client, revived["credential"])).json()["endpoint_id"] == eid
    assert_error(await session_of(client, credential), 401, "UNAUTHORIZED")


async def test_only_the_owner_rotates_or_revokes(
    alice: ApiUser, bob: ApiUser, client: httpx.AsyncClient
) -> None:
    created = await register(alice, "gpu")
    eid, credential = created["endpoint_id"], created["credential"]
    await alice.client.put(
        f"/v1/endpoints/{eid}/sharing", json={"users": ["bob"]}, headers=alice.headers
    )
    assert "credential" not in (await bob.get(f"/v1/endpoints/{eid}")).json()
    assert_error(await bob.post(f"/v1/endpoints/{eid}/credential"), 403, "FORBIDDEN")
    response = await bob.client.delete(f"/v1/endpoints/{eid}/credential", headers=bob.headers)
    assert_error(response, 403, "FORBIDDEN")
    assert (await session_of(client, credential)).json()["endpoint_id"] == eid


async def test_of_concurrent_creations_only_one_is_shown_a_credential(
    alice: ApiUser, client: httpx.AsyncClient
) -> None:
    answers = await asyncio.gather(*(register(alice, "same-name") for _ in range(5)))
    assert len({answer["endpoint_id"] for answer in answers}) == 1
    credentials = [answer["credential"] for answer in answers if "credential" in answer]
    assert len(credentials) == 1
    response = await session_of(client, credentials[0])
    assert response.json()["endpoint_id"] == answers[0]["endpoint_id"]
