"""Bearer-token auth, the error shape, and the routes around the API."""

from __future__ import annotations

import uuid
from dataclasses import replace
from importlib.metadata import version

import httpx
import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from tests.conftest import free_port
from web_service.accounts import create_user, issue_token, revoke_token
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error, in_process_client


async def test_missing_token_is_401_json(client: httpx.AsyncClient, alice: ApiUser) -> None:
    response = await client.get("/v1/whoami")
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_unknown_token_is_401(client: httpx.AsyncClient, alice: ApiUser) -> None:
    response = await client.get("/v1/whoami", headers={"Authorization": "Bearer fxb_not-a-token"})
    assert_error(response, 401, "UNAUTHORIZED")


async def test_non_bearer_scheme_is_401(client: httpx.AsyncClient, alice: ApiUser) -> None:
    response = await client.get("/v1/whoami", headers={"Authorization": f"Basic {alice.token}"})
    assert_error(response, 401, "UNAUTHORIZED")


async def test_every_v1_route_needs_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/info"),
        ("POST", "/v1/functions"),
        ("GET", "/v1/functions/x"),
        ("POST", "/v1/endpoints"),
        ("GET", "/v1/endpoints/x"),
        ("POST", "/v1/endpoints/x/submit"),
        ("GET", "/v1/tasks/x"),
        ("POST", "/v1/tasks/batch_status"),
        ("GET", "/v1/task_groups/x"),
    ]:
        assert_error(await client.request(method, path), 401, "UNAUTHORIZED")


async def test_whoami_names_the_tokens_owner(alice: ApiUser, bob: ApiUser) -> None:
    assert (await alice.get("/v1/whoami")).json() == {"user_id": alice.user_id, "name": "alice"}
    assert (await bob.get("/v1/whoami")).json() == {"user_id": bob.user_id, "name": "bob"}


async def test_a_second_token_works_too(
    client: httpx.AsyncClient, alice: ApiUser, migrated_database_url: str
) -> None:
    token = await issue_token(migrated_database_url, "alice")
    assert token != alice.token
    response = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.json()["user_id"] == alice.user_id


async def test_info_serves_the_ws_url_and_version(alice: ApiUser) -> None:
    assert (await alice.get("/v1/info")).json() == {
        "ws_url": "ws://127.0.0.1:8001",
        "version": version("fxbroker"),
    }


async def test_probes_need_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_unknown_route_and_wrong_method_are_json(
    client: httpx.AsyncClient, alice: ApiUser
) -> None:
    assert_error(await alice.get("/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(await client.get("/nothing-here"), 404, "NOT_FOUND")
    assert_error(
        await alice.client.put("/v1/functions", headers=alice.headers), 405, "METHOD_NOT_ALLOWED"
    )


async def test_a_405_allows_every_method_of_the_path_not_of_one_route(alice: ApiUser) -> None:
    document = (await alice.get("/v1/openapi.json")).json()
    credential = (await alice.post("/v1/endpoints", {"name": "allow"})).json()["credential"]
    some_id = str(uuid.uuid4())
    ids = dict.fromkeys(("function_id", "endpoint_id", "task_id", "task_group_id"), some_id)
    for template, operations in document["paths"].items():
        agents_only = any(
            operation.get("security") == [{"endpointCredential": []}]
            for operation in operations.values()
        )
        token = credential if agents_only else alice.token
        response = await alice.client.options(
            template.format_map(ids), headers={"Authorization": f"Bearer {token}"}
        )
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        documented = {method.upper() for method in operations}
        expected = documented | ({"HEAD"} if "GET" in documented else set())
        assert set(response.headers["allow"].split(", ")) == expected, template


async def test_a_revoked_token_is_refused(web_settings: WebSettings) -> None:
    settings = replace(web_settings, auth_cache_s=0)
    _, token = await create_user(settings.database_url, "erin")
    headers = {"Authorization": f"Bearer {token}"}
    async with in_process_client(create_app(settings)) as client:
        assert (await client.get("/v1/whoami", headers=headers)).status_code == 200
        await revoke_token(settings.database_url, token[:8])
        assert_error(await client.get("/v1/whoami", headers=headers), 401, "UNAUTHORIZED")


async def test_redis_away_is_503_json_with_retry_after_and_readyz_says_what_fails(
    web_settings: WebSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = replace(web_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    _, token = await create_user(settings.database_url, "frank")
    app = create_app(settings)
    async with in_process_client(app, raise_app_exceptions=False) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "failing": ["redis"]}
        assert ready.headers["retry-after"] == "1"
        for _ in range(3):
            response = await client.get(
                f"/v1/tasks/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}
            )
            body = assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert response.headers["retry-after"] == "1"
            assert "Redis" in body["message"]
    # One line for the outage, however many requests met it; no traceback.
    lines = [r for r in caplog.records if r.getMessage().startswith("Redis is unavailable")]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Traceback" not in caplog.text


async def test_a_real_fault_is_still_500_json_logged_with_its_request_id(
    web_settings: WebSettings, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = await create_user(web_settings.database_url, "grace")
    task_id = str(uuid.uuid4())
    keys = Keys(web_settings.key_prefix)
    broken = aioredis.Redis.from_url(web_settings.redis_url)
    try:
        await broken.set(keys.task(task_id), "not a hash")  # WRONGTYPE: a bug, not an outage
        async with in_process_client(
            create_app(web_settings), raise_app_exceptions=False
        ) as client:
            response = await client.get(
                f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}
            )
    finally:
        await broken.aclose()
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "INTERNAL_ERROR"
    assert body["request_id"] in caplog.text
