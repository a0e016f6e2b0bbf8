"""The web service while Redis or SQL is away: 503 with Retry-After, never a 500; /readyz
names what is down; service comes back by itself when the dependency does."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace

import httpx
import pytest
from sqlalchemy.engine import make_url

from sdk.serialize import SOURCE_CODE, pack_payload, serialize
from tests.conftest import free_port
from tests.private_redis import PrivateRedis
from tests.tcp_proxy import TcpProxy
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error, in_process_client

DEADLINE_S = 30.0


def inc(x: int) -> int:
    return x + 1


CODE = serialize(inc, SOURCE_CODE)


async def get_task(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(
        f"/v1/tasks/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}
    )


async def test_a_redis_restart_is_503_meanwhile_and_served_again_after(
    web_settings: WebSettings,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = replace(web_settings, redis_url=private_redis.url)
    _, token = await create_user(settings.database_url, "heidi")
    async with in_process_client(create_app(settings), raise_app_exceptions=False) as client:
        assert_error(await get_task(client, token), 404, "TASK_NOT_FOUND")  # token now cached
        await asyncio.to_thread(private_redis.stop)
        for _ in range(3):
            response = await get_task(client, token)
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert response.headers["retry-after"] == "1"
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()["failing"]) == (503, ["redis"])
        await asyncio.to_thread(private_redis.start)
        deadline = time.monotonic() + DEADLINE_S
        while (await get_task(client, token)).status_code != 404:
            assert time.monotonic() < deadline, "the web service did not recover"
            await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Redis is")]
    assert lines[0].startswith("Redis is unavailable") and lines[-1].startswith("Redis is back")
    assert len(lines) == 2, lines
    assert "Traceback" not in caplog.text


async def test_sql_away_is_503_for_routes_that_need_it(
    web_settings: WebSettings, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"postgresql+asyncpg://fxbroker@127.0.0.1:{free_port()}/nothing"
    settings = replace(web_settings, database_url=dead)
    async with in_process_client(create_app(settings), raise_app_exceptions=False) as client:
        for _ in range(2):
            response = await get_task(client, "fxb_uncached-token")  # the token needs SQL
            body = assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert "SQL" in body["message"] and response.headers["retry-after"] == "1"
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()["failing"]) == (503, ["database"])
        assert (await client.get("/healthz")).status_code == 200
    lines = [r for r in caplog.records if r.getMessage().startswith("SQL is unavailable")]
    assert len(lines) == 1
    assert "Traceback" not in caplog.text


async def test_warm_submits_keep_working_while_sql_is_away(
    web_settings: WebSettings, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(web_settings.database_url)
    if not url.drivername.startswith("postgresql"):
        pytest.skip("needs DATABASE_URL (PostgreSQL) to put a cuttable proxy in front of")
    _, token = await create_user(web_settings.database_url, "ivan")
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = replace(web_settings, database_url=proxied)
        async with in_process_client(create_app(settings), raise_app_exceptions=False) as http:
            user = ApiUser("", "ivan", token, http)
            function = await user.post(
                "/v1/functions", {"function_name": "inc", "function_code": CODE}
            )
            endpoint = await user.post("/v1/endpoints", {"name": "gpu"})
            fid, eid = function.json()["function_id"], endpoint.json()["endpoint_id"]
            task = {"function_id": fid, "payload": pack_payload((1,))}
            first = await user.post(f"/v1/endpoints/{eid}/submit", {"tasks": [task]})
            group = first.json()["task_group_id"]  # token, function, endpoint, group: cached

            await proxy.cut()  # SQL away
            warm = await user.post(
                f"/v1/endpoints/{eid}/submit", {"tasks": [task], "task_group_id": group}
            )
            assert warm.status_code == 200, warm.text
            listing = await user.get("/v1/endpoints")  # needs SQL
            assert_error(listing, 503, "SERVICE_UNAVAILABLE")
            assert listing.headers["retry-after"] == "1"

            await proxy.restore()
            deadline = time.monotonic() + DEADLINE_S
            while (await user.get("/v1/endpoints")).status_code != 200:
                assert time.monotonic() < deadline, "the web service did not recover"
                await asyncio.sleep(0.05)
    assert "Traceback" not in caplog.text
