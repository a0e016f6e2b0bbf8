"""The Globus Compute routes in process: the client-credentials grant (mint, exchange,
expiry, revocation), and what the translation layer accepts and answers.

The unmodified SDK against real processes is tests/e2e/test_globus_compute.py.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import update

from sdk.keys import Keys
from sdk.messages import TaskInfo
from sdk.serialize import DILL_CODE, SOURCE_CODE, pack_buffers, pack_payload, serialize
from web_service.app import create_app
from web_service.client_credentials import (
    mint_client_credential,
    revoke_client_credential,
)
from web_service.errors import ApiError
from web_service.routes.compute_documents import parse_registration, task_document
from web_service.settings import WebSettings
from web_service.store.database import open_engine
from web_service.store.models import Token, utcnow

from .helpers import ApiUser, assert_error, in_process_client

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRANT = "grant_type=client_credentials&scope=openid"


def double(x: int) -> int:
    return 2 * x


def basic(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {**FORM, "Authorization": f"Basic {encoded}"}


@pytest.fixture
async def uncached(web_settings: WebSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The web service with no auth cache: a revoked token is refused at its next request."""
    settings = dataclasses.replace(web_settings, auth_cache_s=0.0)
    async with in_process_client(create_app(settings)) as http:
        yield http


async def _exchange(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await client.post("/v2/oauth2/token", content=GRANT, headers=basic(client_id, secret))


async def test_client_credentials_grant_a_token_of_their_user(
    alice: ApiUser, uncached: httpx.AsyncClient, migrated_database_url: str
) -> None:
    minted = await mint_client_credential(migrated_database_url, "alice")
    response = await _exchange(uncached, minted.client_id, minted.secret)
    assert response.status_code == 200, response.text
    granted = response.json()
    assert granted["token_type"] == "Bearer" and granted["resource_server"] == "funcx_service"
    assert granted["expires_in"] == 48 * 3600 and granted["scope"] == "openid"
    assert response.headers["cache-control"] == "no-store"
    token = granted["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await uncached.get("/v1/whoami", headers=headers)).json()["name"] == "alice"
    assert (await uncached.get("/v2/endpoints", headers=headers)).json() == []

    for client_id, secret in ((minted.client_id, "fxcs_wrong"), ("not-a-uuid", minted.secret)):
        refused = await _exchange(uncached, client_id, secret)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert "access_token" not in refused.json()
    wrong_grant = await uncached.post(
        "/v2/oauth2/token", content="grant_type=password", headers=basic(*minted.__dict__.values())
    )
    assert_error(wrong_grant, 400, "UNSUPPORTED_GRANT_TYPE")
    assert_error(
        await uncached.post("/v2/oauth2/token", content=GRANT, headers=FORM), 401, "INVALID_CLIENT"
    )

    await revoke_client_credential(migrated_database_url, minted.client_id)
    assert_error(await uncached.get("/v1/whoami", headers=headers), 401, "UNAUTHORIZED")
    assert (await _exchange(uncached, minted.client_id, minted.secret)).status_code == 401


async def test_an_exchanged_token_expires(
    alice: ApiUser, uncached: httpx.AsyncClient, migrated_database_url: str
) -> None:
    minted = await mint_client_credential(migrated_database_url, "alice")
    token = (await _exchange(uncached, minted.client_id, minted.secret)).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await uncached.get("/v1/whoami", headers=headers)).status_code == 200
    async with open_engine(migrated_database_url) as engine, engine.begin() as connection:
        await connection.execute(
            update(Token)
            .where(Token.client_id == minted.client_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert_error(await uncached.get("/v1/whoami", headers=headers), 401, "UNAUTHORIZED")
    # alice's own token (no expiry) is untouched
    assert (await uncached.get("/v1/whoami", headers=alice.headers)).status_code == 200


async def test_a_client_revokes_its_own_token_and_no_other(
    alice: ApiUser, bob: ApiUser, uncached: httpx.AsyncClient, migrated_database_url: str
) -> None:
    """``POST /v2/oauth2/token/revoke``, where that SDK's ``logout`` sends its token."""
    minted = await mint_client_credential(migrated_database_url, "alice")
    other = await mint_client_credential(migrated_database_url, "bob")
    pair = (minted.client_id, minted.secret)
    token = (await _exchange(uncached, *pair)).json()["access_token"]
    kept = (await _exchange(uncached, *pair)).json()["access_token"]
    bobs = (await _exchange(uncached, other.client_id, other.secret)).json()["access_token"]

    def works(token: str) -> Any:
        return uncached.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})

    for stranger in (bobs, bob.token, "fxb_no-such-token"):  # not this client's: left alone
        answer = await uncached.post(
            "/v2/oauth2/token/revoke", content=f"token={stranger}", headers=basic(*pair)
        )
        assert (answer.status_code, answer.json()) == (200, {"active": False})
    assert (await works(bobs)).status_code == 200 and (await works(bob.token)).status_code == 200

    wrong = basic(minted.client_id, "fxcs_wrong")
    refused = await uncached.post(
        "/v2/oauth2/token/revoke", content=f"token={token}", headers=wrong
    )
    assert_error(refused, 401, "INVALID_CLIENT")
    nothing = await uncached.post(
        "/v2/oauth2/token/revoke", content="token_type_hint=access_token", headers=basic(*pair)
    )
    assert_error(nothing, 400, "INVALID_REQUEST")
    assert (await works(token)).status_code == 200

    revoked = await uncached.post(
        "/v2/oauth2/token/revoke", content=f"token={token}", headers=basic(*pair)
    )
    assert (revoked.status_code, revoked.json()) == (200, {"active": False})
    assert revoked.headers["cache-control"] == "no-store"
    assert_error(await works(token), 401, "UNAUTHORIZED")
    assert (await works(kept)).status_code == 200  # the client's other token is its own to revoke
    again = await uncached.post(
        "/v2/oauth2/token/revoke", content=f"token={token}", headers=basic(*pair)
    )
    assert again.status_code == 200


def test_registration_keeps_one_runnable_buffer() -> None:
    dill = serialize(double, DILL_CODE)
    assert parse_registration(
        {"function_name": "d", "function_code": pack_buffers([dill])}
    ).code == (dill)
    source = parse_registration(
        {
            "function_name": "greet",
            "function_code": "  def greet():\n    pass\n",
            "serialized": False,
        }
    )
    assert source.code == "st\ngreet:def greet():\n  pass\n"
    combined = pack_buffers(["12\n" + pack_buffers(["sd\nf:def f(): pass", dill])])
    assert parse_registration({"function_name": "f", "function_code": combined}).code == (
        "st\nf:def f(): pass"
    )
    for bad in (dill, pack_buffers([dill, dill]), pack_buffers(["04\nxyz"])):
        with pytest.raises(ApiError) as info:
            parse_registration({"function_name": "d", "function_code": bad})
        assert info.value.status == 422


def _info(state: str, **extra: Any) -> TaskInfo:
    info: TaskInfo = {
        "task_id": "t",
        "state": state,
        "endpoint_id": "e",
        "function_id": "f",
        "task_group_id": "g",
        "created_at": 1.0,
        "started_at": None,
        "completed_at": None,
    }
    info.update(extra)  # type: ignore[typeddict-item]
    return info


def test_task_documents() -> None:
    assert task_document(_info("waiting-for-ep")) == {"task_id": "t", "status": "waiting-for-ep"}
    assert task_document(_info("running")) == {"task_id": "t", "status": "running"}
    done = task_document(_info("success", completed_at=2.5, result="00\nxx"))
    assert done == {"task_id": "t", "status": "success", "completion_t": "2.5", "result": "00\nxx"}
    record = {"type": "ValueError", "module": "builtins", "message": "no", "traceback": "TB"}
    failed = task_document(_info("failed", completed_at=3.0, exception=record))
    assert (failed["status"], failed["exception"]) == ("failed", "TB")
    untraced = task_document(
        _info("failed", completed_at=3.0, exception={**record, "traceback": ""})
    )
    assert untraced["exception"] == "ValueError: no"
    cancelled = task_document(_info("cancelled", completed_at=4.0))
    assert cancelled["status"] == "failed" and "cancelled" in cancelled["exception"]


async def test_submit_keys_tasks_by_function_and_carries_result_serializers(
    alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    code = pack_buffers([serialize(double, SOURCE_CODE)])
    fid = await alice.post("/v3/functions", {"function_name": "double", "function_code": code})
    fid_value = fid.json()["function_uuid"]
    eid = (await alice.post("/v3/endpoints", {"endpoint_name": "gpu"})).json()["endpoint_id"]
    payloads = [pack_payload((x,)) for x in range(3)]
    body = {
        "tasks": {fid_value: payloads},
        "create_queue": False,
        "result_serializers": ["globus_compute_sdk.serialize.JSONData"],
        "user_runtime": {"python_version": "3.11"},
    }
    submitted = await alice.client.post(
        f"/v3/endpoints/{eid}/submit", json=body, headers={**alice.headers, "Idempotency-Key": "k1"}
    )
    assert submitted.status_code == 200, submitted.text
    answer = submitted.json()
    task_ids = answer["tasks"][fid_value]
    assert len(task_ids) == 3 and answer["endpoint_id"] == eid
    entries = await aredis.xrange(keys.endpoint_tasks(eid))
    assert [fields["task_id"] for _, fields in entries] == task_ids
    assert {fields["result_serializers"] for _, fields in entries} == {"11"}
    again = await alice.client.post(
        f"/v3/endpoints/{eid}/submit", json=body, headers={**alice.headers, "Idempotency-Key": "k1"}
    )
    assert again.json()["tasks"] == answer["tasks"]
    assert again.json()["task_group_id"] == answer["task_group_id"]
    assert await aredis.xlen(keys.endpoint_tasks(eid)) == 3

    queue = await alice.post(f"/v3/endpoints/{eid}/submit", {**body, "create_queue": True})
    assert "FXBROKER_AMQP_URL" in assert_error(queue, 422, "AMQP_NOT_CONFIGURED")["message"]
    unknown = await alice.post(
        f"/v3/endpoints/{eid}/submit", {**body, "result_serializers": ["my.Serializer"]}
    )
    assert "my.Serializer" in assert_error(unknown, 422, "VALIDATION_ERROR")["message"]
    # a key that is no uuid names no function, as an unknown uuid does; a list is never empty
    not_an_id = await alice.post(f"/v3/endpoints/{eid}/submit", {"tasks": {"f": payloads}})
    assert_error(not_an_id, 404, "FUNCTION_NOT_FOUND")
    empty = await alice.post(
        f"/v3/endpoints/{eid}/submit", {"tasks": {fid_value: payloads, str(uuid.uuid4()): []}}
    )
    assert_error(empty, 422, "VALIDATION_ERROR")
    assert await aredis.xlen(keys.endpoint_tasks(eid)) == 3
    status = (await alice.post("/v2/batch_status", {"task_ids": task_ids})).json()
    assert status["results"] == {t: {"task_id": t, "status": "waiting-for-ep"} for t in task_ids}
