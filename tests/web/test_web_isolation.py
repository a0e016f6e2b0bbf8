"""Isolation: a second user, created with the CLI, can neither see nor touch the first user's
endpoint, function, task group or task through any route (``/v1`` and the Globus Compute
``/v2`` and ``/v3``).

The test walks every route the app serves (a new route without a case here fails it) and
afterwards checks that nothing of the first user's changed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.routing import Route

from fxbroker.cli import main
from sdk.keys import Keys
from sdk.serialize import SOURCE_CODE, pack_buffers, serialize
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error


def secret(x: int) -> int:
    return x * 7


CODE = serialize(secret, SOURCE_CODE)
NOT_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
"""Public and about no user's objects (covered in their own tests)."""
BROWSER_ROUTES = {("GET", "/dashboard/api/events")}
"""The dashboard's event stream pushes what ``/dashboard/api/snapshot`` answers (the same
``Snapshots``); a second user's stream is checked in a browser (tests/dashboard)."""
ORIGIN = {"origin": "http://testserver"}


@pytest.fixture
def mallory_token(
    migrated_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[str]:
    """``fxbroker user create mallory``: the token it printed."""
    monkeypatch.setenv("DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["user", "create", "mallory"]) == 0
    yield capsys.readouterr().out.strip()


async def test_a_second_user_can_neither_see_nor_touch_anything(
    alice: ApiUser,
    mallory_token: str,
    web_settings: WebSettings,
    aredis: aioredis.Redis,
    keys: Keys,
) -> None:
    mallory = ApiUser("", "mallory", mallory_token, alice.client)
    mallory.user_id = (await mallory.get("/v1/whoami")).json()["user_id"]
    fid = (await alice.post("/v1/functions", {"function_name": "s", "function_code": CODE})).json()[
        "function_id"
    ]
    registered = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()
    eid, alices_credential = registered["endpoint_id"], registered["credential"]
    await alice.client.put(
        f"/v1/endpoints/{eid}/allowed_functions",
        json={"function_ids": [fid]},
        headers=alice.headers,
    )
    submitted = (
        await alice.post(
            f"/v1/endpoints/{eid}/submit", {"tasks": [{"function_id": fid, "payload": "p"}] * 2}
        )
    ).json()
    gid, (tid, tid2) = submitted["task_group_id"], submitted["task_ids"]
    mallorys = (await mallory.post("/v1/endpoints", {"name": "mine"})).json()
    mallorys_eid, mallorys_credential = mallorys["endpoint_id"], mallorys["credential"]

    async def call(method: str, path: str, body: Any = None) -> Any:
        return await mallory.client.request(method, path, json=body, headers=mallory.headers)

    async def hidden(method: str, path: str, code: str, body: Any = None) -> None:
        assert_error(await call(method, path, body), 404, code)

    cases: dict[tuple[str, str], Any] = {
        ("GET", "/v1/whoami"): lambda: _expect_self(call, mallory.user_id),
        ("GET", "/v1/info"): lambda: _expect_ok(call("GET", "/v1/info")),
        ("GET", "/v1/openapi.json"): lambda: _expect_ok(call("GET", "/v1/openapi.json")),
        ("POST", "/v1/functions"): lambda: _expect_own_function(call, fid),
        ("GET", "/v1/functions"): lambda: _expect_unlisted(call, "/v1/functions", "functions", fid),
        ("GET", "/v1/functions/{function_id}"): lambda: hidden(
            "GET", f"/v1/functions/{fid}", "FUNCTION_NOT_FOUND"
        ),
        ("DELETE", "/v1/functions/{function_id}"): lambda: hidden(
            "DELETE", f"/v1/functions/{fid}", "FUNCTION_NOT_FOUND"
        ),
        ("GET", "/v1/functions/{function_id}/sharing"): lambda: hidden(
            "GET", f"/v1/functions/{fid}/sharing", "FUNCTION_NOT_FOUND"
        ),
        ("PUT", "/v1/functions/{function_id}/sharing"): lambda: hidden(
            "PUT",
            f"/v1/functions/{fid}/sharing",
            "FUNCTION_NOT_FOUND",
            {"public": True, "users": ["mallory"]},
        ),
        ("POST", "/v1/endpoints"): lambda: _expect_own_endpoint(call, eid),
        ("GET", "/v1/endpoints"): lambda: _expect_unlisted(call, "/v1/endpoints", "endpoints", eid),
        ("GET", "/v1/endpoints/status"): lambda: _expect_unlisted(
            call, "/v1/endpoints/status", "endpoints", eid
        ),
        ("GET", "/v1/endpoints/{endpoint_id}"): lambda: hidden(
            "GET", f"/v1/endpoints/{eid}", "ENDPOINT_NOT_FOUND"
        ),
        ("DELETE", "/v1/endpoints/{endpoint_id}"): lambda: hidden(
            "DELETE", f"/v1/endpoints/{eid}", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v1/endpoints/{endpoint_id}/status"): lambda: hidden(
            "GET", f"/v1/endpoints/{eid}/status", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v1/endpoints/{endpoint_id}/sharing"): lambda: hidden(
            "GET", f"/v1/endpoints/{eid}/sharing", "ENDPOINT_NOT_FOUND"
        ),
        ("PUT", "/v1/endpoints/{endpoint_id}/sharing"): lambda: hidden(
            "PUT", f"/v1/endpoints/{eid}/sharing", "ENDPOINT_NOT_FOUND", {"users": ["mallory"]}
        ),
        ("GET", "/v1/endpoints/{endpoint_id}/allowed_functions"): lambda: hidden(
            "GET", f"/v1/endpoints/{eid}/allowed_functions", "ENDPOINT_NOT_FOUND"
        ),
        ("PUT", "/v1/endpoints/{endpoint_id}/allowed_functions"): lambda: hidden(
            "PUT",
            f"/v1/endpoints/{eid}/allowed_functions",
            "ENDPOINT_NOT_FOUND",
            {"function_ids": []},
        ),
        ("POST", "/v1/endpoints/{endpoint_id}/credential"): lambda: hidden(
            "POST", f"/v1/endpoints/{eid}/credential", "ENDPOINT_NOT_FOUND"
        ),
        ("DELETE", "/v1/endpoints/{endpoint_id}/credential"): lambda: hidden(
            "DELETE", f"/v1/endpoints/{eid}/credential", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v1/endpoint_session"): lambda: _expect_own_session(
            call, mallory, mallorys_eid, mallorys_credential
        ),
        ("POST", "/v1/endpoints/{endpoint_id}/submit"): lambda: _expect_no_submit(
            hidden, eid, mallorys_eid, fid, gid
        ),
        ("GET", "/v1/tasks/{task_id}"): lambda: hidden("GET", f"/v1/tasks/{tid}", "TASK_NOT_FOUND"),
        ("POST", "/v1/tasks/{task_id}/cancel"): lambda: hidden(
            "POST", f"/v1/tasks/{tid}/cancel", "TASK_NOT_FOUND"
        ),
        ("POST", "/v1/tasks/batch_status"): lambda: _expect_unknown(
            call, "/v1/tasks/batch_status", [tid, tid2]
        ),
        ("POST", "/v1/tasks/cancel"): lambda: _expect_unknown(
            call, "/v1/tasks/cancel", [tid, tid2]
        ),
        ("GET", "/v1/task_groups"): lambda: _expect_unlisted(
            call, "/v1/task_groups", "task_groups", gid
        ),
        ("GET", "/v1/task_groups/{task_group_id}"): lambda: hidden(
            "GET", f"/v1/task_groups/{gid}", "TASK_GROUP_NOT_FOUND"
        ),
        # the Globus Compute routes
        ("GET", "/v2/version"): lambda: _expect_ok(call("GET", "/v2/version")),
        ("POST", "/v2/oauth2/token"): lambda: _expect_no_access_token(mallory),
        ("POST", "/v2/oauth2/token/revoke"): lambda: _expect_no_revocation(mallory, alice.token),
        ("GET", "/v2/functions/{function_id}"): lambda: hidden(
            "GET", f"/v2/functions/{fid}", "FUNCTION_NOT_FOUND"
        ),
        ("DELETE", "/v2/functions/{function_id}"): lambda: hidden(
            "DELETE", f"/v2/functions/{fid}", "FUNCTION_NOT_FOUND"
        ),
        ("GET", "/v2/endpoints"): lambda: _expect_unlisted_v2(call, eid, mallorys_eid),
        ("GET", "/v2/endpoints/{endpoint_id}"): lambda: hidden(
            "GET", f"/v2/endpoints/{eid}", "ENDPOINT_NOT_FOUND"
        ),
        ("DELETE", "/v2/endpoints/{endpoint_id}"): lambda: hidden(
            "DELETE", f"/v2/endpoints/{eid}", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v2/endpoints/{endpoint_id}/status"): lambda: hidden(
            "GET", f"/v2/endpoints/{eid}/status", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v2/tasks/{task_id}"): lambda: hidden("GET", f"/v2/tasks/{tid}", "TASK_NOT_FOUND"),
        ("POST", "/v2/batch_status"): lambda: _expect_no_results(call, [tid, tid2]),
        ("GET", "/v2/taskgroup/{task_group_id}"): lambda: hidden(
            "GET", f"/v2/taskgroup/{gid}", "TASK_GROUP_NOT_FOUND"
        ),
        ("GET", "/v2/get_amqp_result_connection_url"): lambda: _expect_no_amqp(call),
        ("POST", "/v3/functions"): lambda: _expect_own_function_v3(call, fid),
        ("POST", "/v3/endpoints"): lambda: _expect_own_endpoint_v3(call, eid),
        ("PUT", "/v3/endpoints/{endpoint_id}"): lambda: hidden(
            "PUT", f"/v3/endpoints/{eid}", "ENDPOINT_NOT_FOUND", {"endpoint_name": "gpu"}
        ),
        ("POST", "/v3/endpoints/{endpoint_id}/lock"): lambda: hidden(
            "POST", f"/v3/endpoints/{eid}/lock", "ENDPOINT_NOT_FOUND"
        ),
        ("GET", "/v3/endpoints/{endpoint_id}/allowed_functions"): lambda: hidden(
            "GET", f"/v3/endpoints/{eid}/allowed_functions", "ENDPOINT_NOT_FOUND"
        ),
        ("POST", "/v3/endpoints/{endpoint_id}/submit"): lambda: _expect_no_submit_v3(
            hidden, eid, mallorys_eid, fid
        ),
        # the dashboard, mallory signed in to it
        ("GET", "/dashboard"): lambda: _expect_ok(call("GET", "/dashboard")),
        ("GET", "/dashboard/static/{name}"): lambda: _expect_ok(
            call("GET", "/dashboard/static/dashboard.js")
        ),
        ("POST", "/dashboard/sign-in"): lambda: _expect_dashboard_self(mallory),
        ("GET", "/dashboard/sign-in"): lambda: _expect_no_session_from_a_bad_code(mallory),
        ("POST", "/dashboard/sign-out"): lambda: _expect_own_sign_out(mallory),
        ("GET", "/dashboard/api/me"): lambda: _expect_dashboard_self(mallory),
        ("GET", "/dashboard/api/snapshot"): lambda: _expect_empty_snapshot(
            mallory, eid, fid, [tid, tid2], mallorys_eid
        ),
        ("GET", "/dashboard/api/tasks/{task_id}"): lambda: _expect_dashboard_hidden(
            mallory, "GET", f"/dashboard/api/tasks/{tid}"
        ),
        ("POST", "/dashboard/api/tasks/{task_id}/cancel"): lambda: _expect_dashboard_hidden(
            mallory, "POST", f"/dashboard/api/tasks/{tid}/cancel"
        ),
        ("POST", "/dashboard/api/codes"): lambda: _expect_own_code(call, mallory),
    }
    served = {
        (method, route.path)
        for route in create_app(web_settings).routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served - NOT_ROUTES - BROWSER_ROUTES == set(cases), "every route needs an isolation case"
    for case in cases.values():
        await case()

    # nothing of alice's changed
    assert (await alice.get(f"/v1/functions/{fid}")).json()["public"] is False
    assert (await alice.get(f"/v1/functions/{fid}/sharing")).json()["users"] == []
    assert (await alice.get(f"/v1/endpoints/{eid}/sharing")).json()["users"] == []
    assert (await alice.get(f"/v1/endpoints/{eid}/allowed_functions")).json()["function_ids"] == [
        fid
    ]
    for task_id in (tid, tid2):
        assert (await alice.get(f"/v1/tasks/{task_id}")).json()["state"] == "waiting-for-ep"
    group = (await alice.get(f"/v1/task_groups/{gid}")).json()
    assert group["task_ids"] == [tid, tid2]
    assert await aredis.xlen(keys.endpoint_tasks(eid)) == 2
    assert await aredis.xlen(keys.task_group_results(gid)) == 0
    session = await alice.client.get(
        "/v1/endpoint_session", headers={"Authorization": f"Bearer {alices_credential}"}
    )
    assert session.json()["endpoint_id"] == eid  # alice's credential still works


async def _dashboard_sign_in(mallory: ApiUser) -> str:
    """Mallory's dashboard session on the shared client; its CSRF token."""
    reply = await mallory.client.post(
        "/dashboard/sign-in", json={"token": mallory.token}, headers=ORIGIN
    )
    assert reply.status_code == 200, reply.text
    return str((await mallory.client.get("/dashboard/api/me")).json()["csrf"])


async def _expect_dashboard_self(mallory: ApiUser) -> None:
    await _dashboard_sign_in(mallory)
    assert (await mallory.client.get("/dashboard/api/me")).json()["user"] == "mallory"


async def _expect_no_session_from_a_bad_code(mallory: ApiUser) -> None:
    reply = await mallory.client.get("/dashboard/sign-in?code=not-a-code")
    assert reply.status_code == 303 and "set-cookie" not in reply.headers


async def _expect_own_sign_out(mallory: ApiUser) -> None:
    csrf = await _dashboard_sign_in(mallory)
    reply = await mallory.client.post(
        "/dashboard/sign-out", headers={**ORIGIN, "x-csrf-token": csrf}
    )
    assert reply.status_code == 200
    assert (await mallory.client.get("/dashboard/api/me")).status_code == 401


async def _expect_empty_snapshot(
    mallory: ApiUser, eid: str, fid: str, task_ids: list[str], own_eid: str
) -> None:
    await _dashboard_sign_in(mallory)
    snapshot = (await mallory.client.get("/dashboard/api/snapshot")).json()
    endpoints = {e["endpoint_id"] for e in snapshot["endpoints"]}
    assert own_eid in endpoints and eid not in endpoints
    assert fid not in {f["function_id"] for f in snapshot["functions"]}
    assert not {t["task_id"] for t in snapshot["tasks"]} & set(task_ids)
    assert snapshot["task_groups"] == []


async def _expect_dashboard_hidden(mallory: ApiUser, method: str, path: str) -> None:
    csrf = await _dashboard_sign_in(mallory)
    reply = await mallory.client.request(method, path, headers={**ORIGIN, "x-csrf-token": csrf})
    assert_error(reply, 404, "TASK_NOT_FOUND")


async def _expect_own_code(call: Any, mallory: ApiUser) -> None:
    path = (await call("POST", "/dashboard/api/codes")).json()["path"]
    mallory.client.cookies.clear()
    assert (await mallory.client.get(path)).status_code == 303
    assert (await mallory.client.get("/dashboard/api/me")).json()["user"] == "mallory"


async def _expect_ok(response: Any) -> None:
    assert (await response).status_code == 200


async def _expect_self(call: Any, user_id: str) -> None:
    assert (await call("GET", "/v1/whoami")).json() == {"user_id": user_id, "name": "mallory"}


async def _expect_own_function(call: Any, alices: str) -> None:
    """Registering the same code gives mallory a function of her own, not alice's."""
    body = {"function_name": "s", "function_code": CODE}
    assert (await call("POST", "/v1/functions", body)).json()["function_id"] != alices


async def _expect_own_endpoint(call: Any, alices: str) -> None:
    assert (await call("POST", "/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"] != alices


async def _expect_own_session(
    call: Any, mallory: ApiUser, own_eid: str, own_credential: str
) -> None:
    """Her token is refused on the agents' route; her credential opens only her endpoint."""
    assert_error(await call("GET", "/v1/endpoint_session"), 401, "UNAUTHORIZED")
    response = await mallory.client.get(
        "/v1/endpoint_session", headers={"Authorization": f"Bearer {own_credential}"}
    )
    assert (response.json()["endpoint_id"], response.json()["owner_id"]) == (
        own_eid,
        mallory.user_id,
    )


async def _expect_unlisted(call: Any, path: str, field: str, alices: str) -> None:
    items = (await call("GET", path)).json()[field]
    assert alices not in {item.get(f"{field[:-1]}_id") for item in items}


async def _expect_unknown(call: Any, path: str, task_ids: list[str]) -> None:
    body = (await call("POST", path, {"task_ids": task_ids})).json()
    assert body["tasks"] == {}
    assert body["unknown"] == task_ids


async def _expect_no_submit(hidden: Any, eid: str, own_eid: str, fid: str, gid: str) -> None:
    task = {"function_id": fid, "payload": "p"}
    await hidden("POST", f"/v1/endpoints/{eid}/submit", "ENDPOINT_NOT_FOUND", {"tasks": [task]})
    await hidden("POST", f"/v1/endpoints/{own_eid}/submit", "FUNCTION_NOT_FOUND", {"tasks": [task]})


async def _expect_no_access_token(mallory: ApiUser) -> None:
    """The token route gives nothing for a client id that is not one."""
    basic = base64.b64encode(f"{uuid.uuid4()}:guess".encode()).decode()
    response = await mallory.client.post(
        "/v2/oauth2/token",
        content="grant_type=client_credentials",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 401 and "access_token" not in response.json()


async def _expect_no_revocation(mallory: ApiUser, alices_token: str) -> None:
    """The revocation route revokes nothing for a client id that is not one (alice's token
    still works below) and nothing without client credentials."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    basic = base64.b64encode(f"{uuid.uuid4()}:guess".encode()).decode()
    for headers in ({**form, "Authorization": f"Basic {basic}"}, mallory.headers):
        response = await mallory.client.post(
            "/v2/oauth2/token/revoke", content=f"token={alices_token}", headers=headers
        )
        assert_error(response, 401, "INVALID_CLIENT")


async def _expect_unlisted_v2(call: Any, alices: str, own: str) -> None:
    listed = {item["uuid"] for item in (await call("GET", "/v2/endpoints?role=any")).json()}
    assert alices not in listed and own in listed


async def _expect_no_results(call: Any, task_ids: list[str]) -> None:
    body = (await call("POST", "/v2/batch_status", {"task_ids": task_ids})).json()
    assert body == {"response": "batch", "results": {}}


async def _expect_no_amqp(call: Any) -> None:
    """About no user's objects: this service has no AMQP, and says which setting gives it."""
    body = assert_error(
        await call("GET", "/v2/get_amqp_result_connection_url"), 404, "AMQP_NOT_CONFIGURED"
    )
    assert "FXBROKER_AMQP_URL" in body["message"]


async def _expect_own_function_v3(call: Any, alices: str) -> None:
    body = {"function_name": "s", "function_code": pack_buffers([CODE])}
    assert (await call("POST", "/v3/functions", body)).json()["function_uuid"] != alices


async def _expect_own_endpoint_v3(call: Any, alices: str) -> None:
    body = {"endpoint_name": "gpu"}
    assert (await call("POST", "/v3/endpoints", body)).json()["endpoint_id"] != alices


async def _expect_no_submit_v3(hidden: Any, eid: str, own_eid: str, fid: str) -> None:
    body = {"tasks": {fid: ["p"]}}
    await hidden("POST", f"/v3/endpoints/{eid}/submit", "ENDPOINT_NOT_FOUND", body)
    await hidden("POST", f"/v3/endpoints/{own_eid}/submit", "FUNCTION_NOT_FOUND", body)
