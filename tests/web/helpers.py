"""Helpers of the web service tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send


@asynccontextmanager
async def in_process_client(
    app: Starlette, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in process, with the app's lifespan run around it.

    Like an ASGI server, it hands each request a copy of the state the lifespan yielded;
    with ``raise_app_exceptions=False`` a server fault is seen as the 500 a client gets.
    """
    async with app.router.lifespan_context(app) as state:
        lifespan_state = dict(state or {})

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(lifespan_state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@dataclass
class ApiUser:
    """One user's view of the service: requests carry their token."""

    user_id: str
    name: str
    token: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers)

    async def post(
        self, path: str, body: Any = None, *, content: bytes | None = None
    ) -> httpx.Response:
        if content is not None:
            return await self.client.post(path, content=content, headers=self.headers)
        return await self.client.post(path, json=body, headers=self.headers)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a JSON error of ``status`` and ``code`` that carries its request id."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["request_id"]) == 32
    return body
