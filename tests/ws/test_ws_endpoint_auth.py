"""The gateway's question to the web service: which endpoint does this agent's credential
open? Asked of the real web service (in process, real SQL), answers cached like the
user-token check, each kind of secret refused in the other's place without asking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import free_port
from tests.web.helpers import in_process_client
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings
from ws_service.auth import Authenticator, EndpointSession, WebUnavailable

CACHE_S = 30.0


@dataclass
class Web:
    http: httpx.AsyncClient
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def register(self, name: str) -> tuple[str, str]:
        body = (
            await self.http.post("/v1/endpoints", json={"name": name}, headers=self.headers)
        ).json()
        return body["endpoint_id"], body["credential"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def web(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Web]:
    await asyncio.to_thread(upgrade, database_url)
    settings = WebSettings(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    user_id, token = await create_user(database_url, "ann")
    async with in_process_client(create_app(settings)) as http:
        yield Web(http, token, user_id)


def authenticator(web: Web, clock: Clock) -> Authenticator:
    return Authenticator(web.http, "http://testserver", cache_s=CACHE_S, clock=clock)


async def test_a_credential_opens_its_endpoint_and_the_answer_is_cached(web: Web) -> None:
    eid, credential = await web.register("gpu")
    fid = "00000000-0000-4000-8000-000000000001"
    await web.http.put(
        f"/v1/endpoints/{eid}/allowed_functions", json={"function_ids": [fid]}, headers=web.headers
    )
    clock = Clock()
    auth = authenticator(web, clock)

    session = await auth.authenticate_endpoint(credential)

    assert session == EndpointSession(
        endpoint_id=eid,
        name="gpu",
        owner_id=web.user_id,
        allowed_functions=frozenset({fid}),
        credential_prefix=credential[:12],
        credential=credential,
    )
    assert credential not in repr(session)
    # Revoked on the web service: the cached answer stands for cache_s, then it is refused.
    await web.http.delete(f"/v1/endpoints/{eid}/credential", headers=web.headers)
    assert await auth.authenticate_endpoint(credential) == session
    clock.now += CACHE_S
    assert await auth.authenticate_endpoint(credential) is None


async def test_refusals_are_not_cached(web: Web) -> None:
    eid, old = await web.register("gpu")
    auth = authenticator(web, Clock())
    assert await auth.authenticate_endpoint("fxep_" + "x" * 43) is None
    rotated = await web.http.post(f"/v1/endpoints/{eid}/credential", headers=web.headers)
    new = rotated.json()["credential"]
    assert await auth.authenticate_endpoint(old) is None  # rotated away before first asked
    session = await auth.authenticate_endpoint(new)  # works at once
    assert session is not None and session.endpoint_id == eid


async def test_a_user_token_is_no_credential_and_a_credential_no_user_token(web: Web) -> None:
    _, credential = await web.register("gpu")
    auth = authenticator(web, Clock())
    assert await auth.authenticate_endpoint(web.token) is None
    assert await auth.authenticate(credential) is None
    caller = await auth.authenticate(web.token)
    assert caller is not None and caller.user_id == web.user_id


async def test_the_wrong_kind_of_secret_is_refused_without_asking() -> None:
    """Nothing listens at the web URL: only a question asked would fail."""
    async with httpx.AsyncClient() as http:
        auth = Authenticator(http, f"http://127.0.0.1:{free_port()}", cache_s=CACHE_S)
        assert await auth.authenticate_endpoint("fxb_a-user-token") is None
        assert await auth.authenticate("fxep_an-endpoint-credential") is None
        with pytest.raises(WebUnavailable):
            await auth.authenticate_endpoint("fxep_an-endpoint-credential")
