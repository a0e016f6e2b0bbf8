"""The dashboard's server side: sign-in, the cookie, CSRF, one-time codes, isolation, counts.

The page itself is driven in a real browser by tests/dashboard; these tests check what the
browser relies on, request by request, in process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from sdk.serialize import SOURCE_CODE, serialize
from web_service.accounts import create_user, revoke_token
from web_service.app import create_app
from web_service.dashboard.sessions import CSRF_HEADER, SESSION_COOKIE
from web_service.dashboard.snapshot import group_views
from web_service.overview import BUCKET_S, WINDOW_S, summarize, throughput
from web_service.settings import WebSettings

from .helpers import ApiUser, assert_error, in_process_client

ORIGIN = {"origin": "http://testserver"}
FOREIGN = {"origin": "http://127.0.0.1:1"}


def work(x: int) -> int:
    return x


async def sign_in(user: ApiUser) -> str:
    """Sign ``user``'s client in; the session's CSRF token."""
    reply = await user.client.post("/dashboard/sign-in", json={"token": user.token}, headers=ORIGIN)
    assert reply.status_code == 200, reply.text
    me = await user.client.get("/dashboard/api/me")
    assert me.json()["user"] == user.name
    return str(me.json()["csrf"])


async def queue(user: ApiUser) -> dict[str, Any]:
    code = serialize(work, SOURCE_CODE)
    function = await user.post("/v1/functions", {"function_name": "w", "function_code": code})
    endpoint = (await user.post("/v1/endpoints", {"name": "cpu"})).json()["endpoint_id"]
    task = {"function_id": function.json()["function_id"], "payload": "p"}
    answer: dict[str, Any] = (
        await user.post(f"/v1/endpoints/{endpoint}/submit", {"tasks": [task] * 3})
    ).json()
    answer["endpoint_id"] = endpoint
    answer["function_id"] = function.json()["function_id"]
    return answer


async def test_sign_in_sets_a_strict_http_only_cookie_holding_no_token(alice: ApiUser) -> None:
    reply = await alice.client.post(
        "/dashboard/sign-in", json={"token": alice.token}, headers=ORIGIN
    )
    assert reply.status_code == 200
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # served over http here
    assert alice.token not in cookie
    me = await alice.client.get("/dashboard/api/me")
    assert me.json()["user"] == "alice"


async def test_sign_in_is_refused_without_a_good_token_or_from_another_origin(
    alice: ApiUser,
) -> None:
    client = alice.client
    bad = await client.post("/dashboard/sign-in", json={"token": "fxb_nope"}, headers=ORIGIN)
    assert_error(bad, 401, "UNAUTHORIZED")
    for headers in (FOREIGN, {}, {**ORIGIN, "sec-fetch-site": "cross-site"}):
        reply = await client.post(
            "/dashboard/sign-in", json={"token": alice.token}, headers=headers
        )
        assert_error(reply, 403, "FORBIDDEN")
        assert "set-cookie" not in reply.headers
    assert_error(await client.get("/dashboard/api/me"), 401, "UNAUTHORIZED")


async def test_a_forged_cancel_changes_nothing_and_a_real_one_cancels(alice: ApiUser) -> None:
    csrf = await sign_in(alice)
    task_id = (await queue(alice))["task_ids"][0]
    path = f"/dashboard/api/tasks/{task_id}/cancel"
    forged = [
        {**FOREIGN, CSRF_HEADER: csrf},  # the right token from another origin
        {**ORIGIN},  # the right origin without the token
        {**ORIGIN, CSRF_HEADER: "guess"},
        {CSRF_HEADER: csrf},  # no Origin at all
    ]
    for headers in forged:
        assert_error(await alice.client.post(path, headers=headers), 403, "FORBIDDEN" if
                     headers.get(CSRF_HEADER) == csrf else "CSRF")  # fmt: skip
        assert (await alice.get(f"/v1/tasks/{task_id}")).json()["state"] == "waiting-for-ep"
    reply = await alice.client.post(path, headers={**ORIGIN, CSRF_HEADER: csrf})
    assert reply.json() == {"task_id": task_id, "state": "cancelled", "outcome": "cancelled"}
    assert (await alice.get(f"/v1/tasks/{task_id}")).json()["state"] == "cancelled"


async def test_a_user_sees_only_their_own_endpoints_functions_and_tasks(
    alice: ApiUser, bob: ApiUser
) -> None:
    queued = await queue(alice)
    await sign_in(alice)
    mine = (await alice.client.get("/dashboard/api/snapshot")).json()
    assert [e["endpoint_id"] for e in mine["endpoints"]] == [queued["endpoint_id"]]
    assert [f["function_id"] for f in mine["functions"]] == [queued["function_id"]]
    assert {t["task_id"] for t in mine["tasks"]} == set(queued["task_ids"])
    assert mine["counts"]["queued"] == 3
    assert mine["endpoints"][0]["queued"] == 3
    assert mine["endpoints"][0]["online"] is False

    bob.client.cookies.clear()  # bob signs in on the same browser after alice
    await sign_in(bob)
    theirs = (await bob.client.get("/dashboard/api/snapshot")).json()
    assert theirs["endpoints"] == theirs["functions"] == theirs["tasks"] == []
    assert theirs["counts"]["queued"] == 0
    assert_error(await bob.client.get(f"/dashboard/api/tasks/{queued['task_ids'][0]}"), 404,
                 "TASK_NOT_FOUND")  # fmt: skip


async def test_a_one_time_code_signs_in_once_and_needs_a_token_to_issue(alice: ApiUser) -> None:
    assert_error(await alice.client.post("/dashboard/api/codes"), 401, "UNAUTHORIZED")
    issued = (await alice.post("/dashboard/api/codes")).json()
    assert alice.token not in issued["path"]
    first = await alice.client.get(issued["path"])
    assert first.status_code == 303 and first.headers["location"] == "/dashboard"
    assert SESSION_COOKIE in first.headers["set-cookie"]
    assert (await alice.client.get("/dashboard/api/me")).json()["user"] == "alice"
    alice.client.cookies.clear()
    again = await alice.client.get(issued["path"])
    assert again.status_code == 303 and "set-cookie" not in again.headers
    assert_error(await alice.client.get("/dashboard/api/me"), 401, "UNAUTHORIZED")


async def test_sign_out_ends_the_session_for_good(alice: ApiUser) -> None:
    csrf = await sign_in(alice)
    assert_error(await alice.client.post("/dashboard/sign-out", headers=FOREIGN), 403, "FORBIDDEN")
    assert (await alice.client.get("/dashboard/api/me")).status_code == 200
    cookie = alice.client.cookies[SESSION_COOKIE]
    out = await alice.client.post("/dashboard/sign-out", headers={**ORIGIN, CSRF_HEADER: csrf})
    assert out.status_code == 200
    alice.client.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")  # replaying it fails
    assert_error(await alice.client.get("/dashboard/api/me"), 401, "UNAUTHORIZED")


async def test_revoking_the_token_ends_its_sessions(web_settings: WebSettings) -> None:
    # auth_cache_s=0: no process caches who a token is, so a revocation counts at once
    # (with a cache, within auth_cache_s)
    settings = dataclasses.replace(web_settings, auth_cache_s=0)
    _, token = await create_user(settings.database_url, "carol")
    async with in_process_client(create_app(settings)) as client:
        carol = ApiUser("", "carol", token, client)
        await sign_in(carol)
        await revoke_token(settings.database_url, token)
        assert_error(await client.get("/dashboard/api/me"), 401, "UNAUTHORIZED")
        assert_error(await client.post("/dashboard/sign-in", json={"token": token},
                                       headers=ORIGIN), 401, "UNAUTHORIZED")  # fmt: skip


async def test_over_https_the_cookie_is_secure(web_settings: WebSettings) -> None:
    _, token = await create_user(web_settings.database_url, "dave")
    async with in_process_client(create_app(web_settings)) as client:
        client.base_url = httpx.URL("https://testserver")
        reply = await client.post(
            "/dashboard/sign-in", json={"token": token}, headers={"origin": "https://testserver"}
        )
        assert reply.status_code == 200, reply.text
        assert "; secure" in reply.headers["set-cookie"].lower()


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(alice: ApiUser) -> None:
    page = await alice.client.get("/dashboard")
    assert page.status_code == 200 and "<title>fxbroker dashboard</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = await alice.client.get("/dashboard/static/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert_error(await alice.client.get("/dashboard/static/index.py"), 404, "ASSET_NOT_FOUND")


def test_throughput_buckets_completions_per_endpoint_over_the_window() -> None:
    now = 10_005.0  # the current bucket is [10_000, 10_010)
    tasks = [
        {"endpoint_id": "e", "completed_at": str(now - 1)},
        {"endpoint_id": "e", "completed_at": str(now - 2)},
        {"endpoint_id": "e", "completed_at": str(now - WINDOW_S - 60)},  # too old
        {"endpoint_id": "other", "completed_at": str(now)},  # not the user's endpoint
        {"endpoint_id": "e"},  # not finished
    ]
    rates = throughput(tasks, ["e"], now=now)
    assert list(rates) == ["e"]
    assert len(rates["e"]) == WINDOW_S // BUCKET_S
    assert rates["e"][-1] == 2 / BUCKET_S
    assert sum(rates["e"]) == 2 / BUCKET_S


def test_summarize_counts_states() -> None:
    states = ["waiting-for-ep", "running", "running", "success", "failed", "cancelled", "x"]
    assert summarize({"state": s} for s in states) == {
        "queued": 1, "running": 2, "finished": 3, "failed": 1, "cancelled": 1,
    }  # fmt: skip


def test_group_views_count_each_groups_sampled_tasks_and_skip_empty_ones() -> None:
    tasks = [
        {"task_group_id": "g1", "state": "success"},
        {"task_group_id": "g1", "state": "running"},
        {"task_group_id": "g2", "state": "failed"},
    ]
    views = group_views([("g2", 2.0), ("g1", 1.0), ("g0", 0.5)], tasks)
    assert [(v["task_group_id"], v["tasks"]) for v in views] == [("g2", 1), ("g1", 2)]
    assert views[1]["running"] == 1 and views[1]["finished"] == 1
    assert views[0]["failed"] == 1
