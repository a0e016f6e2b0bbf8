"""The real platform an agent reaches through the gateway, for the agent's tests: the web
service under uvicorn (users, credentials, functions, submits, cancels), ws_service copies
with their gateway on free ports (in this process, so a test can look at a copy's sessions),
real Redis. The agent under test is given a ws URL and its endpoint's credential, never a
Redis URL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import redis.asyncio as aioredis

from endpoint_agent import AgentSettings
from sdk.keys import Keys
from sdk.messages import hash_field, stored
from sdk.serialize import pack_payload
from sdk.states import TaskState
from tests.agent.helpers import Endpoint
from tests.ws.gateway_helpers import web_service
from web_service.accounts import create_user
from web_service.schema import upgrade
from ws_service.server import ResultServer
from ws_service.settings import WsSettings

WAIT_S = 60.0
"""A safety net so a broken gateway or agent fails a test instead of hanging it."""


@dataclass
class GatewayEndpoint(Endpoint):
    """An endpoint registered with the web service: its credential, and submits through the
    web service's own route (the task group is the last submit's)."""

    credential: str = ""
    http: httpx.AsyncClient | None = None
    gateway_url: str = ""
    """The ws_service copy the agents of the ``endpoint`` fixture reach (see conftest)."""

    async def register(self, code: str) -> str:
        """Register a function's code buffer with the web service; returns its id."""
        assert self.http is not None
        reply = await self.http.post(
            "/v1/functions", json={"function_name": "f", "function_code": code}
        )
        reply.raise_for_status()
        return str(reply.json()["function_id"])

    async def submit_calls(
        self, function_id: str, calls: list[tuple[Any, ...]], **extra: Any
    ) -> list[str]:
        """Submit one task per argument tuple in one request; returns the task ids."""
        assert self.http is not None
        tasks = [{"function_id": function_id, "payload": pack_payload(a), **extra} for a in calls]
        reply = await self.http.post(
            f"/v1/endpoints/{self.endpoint_id}/submit", json={"tasks": tasks}
        )
        reply.raise_for_status()
        self.task_group_id = reply.json()["task_group_id"]
        return list(reply.json()["task_ids"])

    async def cancel(self, task_id: str) -> None:
        assert self.http is not None
        reply = await self.http.post(f"/v1/tasks/{task_id}/cancel")
        reply.raise_for_status()

    async def state(self, task_id: str) -> str:
        return str(await self.redis.hget(self.keys.task(task_id), hash_field("state")))


@dataclass
class GatewayStack:
    """The web service and the settings of ws_service copies on top of it."""

    web_url: str
    http: httpx.AsyncClient
    ws_settings: WsSettings
    redis: aioredis.Redis
    keys: Keys

    @asynccontextmanager
    async def ws(self, port: int = 0, **changes: Any) -> AsyncIterator[ResultServer]:
        """A ws_service copy (with its gateway) on ``port`` (0: a free one)."""
        settings = replace(self.ws_settings, port=port, **changes)
        async with ResultServer(settings) as server:
            yield server

    async def endpoint(self, name: str | None = None) -> GatewayEndpoint:
        reply = await self.http.post("/v1/endpoints", json={"name": name or _unique("ep")})
        reply.raise_for_status()
        body = reply.json()
        return GatewayEndpoint(
            self.redis,
            self.keys,
            endpoint_id=body["endpoint_id"],
            credential=body["credential"],
            http=self.http,
        )


def ws_url(server: ResultServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def settings_for(endpoint: GatewayEndpoint, **overrides: Any) -> AgentSettings:
    """Settings of an agent of ``endpoint`` that reaches its own gateway copy."""
    assert endpoint.gateway_url, "an endpoint from the conftest's fixture has a gateway"
    return agent_settings(endpoint, endpoint.gateway_url, **overrides)


def agent_settings(endpoint: GatewayEndpoint, *urls: str, **overrides: Any) -> AgentSettings:
    """An agent of ``endpoint`` that reaches it through the gateway at ``urls`` only."""
    options: dict[str, Any] = {"workers": 2, "consumer": "agent-1", "block_ms": 100}
    options.update(overrides)
    return AgentSettings(
        endpoint_id=endpoint.endpoint_id,
        ws_url=",".join(urls),
        credential=endpoint.credential,
        **options,
    )


@asynccontextmanager
async def gateway_stack(
    database_url: str, redis_url: str, key_prefix: str, aredis: aioredis.Redis
) -> AsyncIterator[GatewayStack]:
    await asyncio.to_thread(upgrade, database_url)
    _, token = await create_user(database_url, _unique("agent-owner"))
    async with web_service(database_url, redis_url, key_prefix) as web_url:
        async with httpx.AsyncClient(
            base_url=web_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            settings = WsSettings(
                redis_url=redis_url,
                web_url=web_url,
                key_prefix=key_prefix,
                port=0,
                block_ms=500,
                client_name=_unique("fxt-gw"),
                drain_timeout_s=5.0,
            )
            yield GatewayStack(web_url, http, settings, aredis, Keys(key_prefix))


async def until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for ``check()`` (sync or async) to hold, with a safety-net deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def publish_cancel(endpoint: GatewayEndpoint, task_id: str) -> None:
    """What the web service publishes when the owner cancels a running task."""
    channel = endpoint.keys.endpoint_cancel(endpoint.endpoint_id)
    assert await endpoint.redis.publish(channel, json.dumps({"task_id": task_id})) >= 1


async def assert_cancelled(endpoint: GatewayEndpoint, task_id: str) -> None:
    fields = await endpoint.task(task_id)
    assert fields["state"] == TaskState.CANCELLED, fields
    assert "result" not in fields and "exception" not in fields
    assert fields["completed_at"]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def assert_engine_run(
    endpoint: GatewayEndpoint,
    task_ids: list[str],
    *,
    raised: str,
    too_long: str,
    exited: str,
    lost: str,
) -> None:
    """What an engine's 1,000-task run must leave (the rq and Parsl engine tests): the
    squares of 0..999 each succeeded on its first attempt; ``raised`` failed with its
    ValueError, traceback and output; ``too_long`` with WalltimeExceeded; ``exited`` with
    WorkerLost whose message holds ``lost``; one notice each, and nothing unsettled."""
    pipe = endpoint.redis.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(endpoint.keys.task(task_id), stored("state", "attempts"))
    rows = await pipe.execute()
    assert {(state, attempts) for state, attempts in rows} == {(TaskState.SUCCESS, "1")}
    results = [await endpoint.result(t) for t in task_ids]
    assert results == [i * i for i in range(1000)]

    record = await endpoint.failure(raised)
    assert (record["type"], record["message"]) == ("ValueError", "no luck")
    assert "in loud" in record["traceback"]
    assert record["traceback"].rstrip().endswith("ValueError: no luck")
    fields = await endpoint.task(raised)
    assert (fields["stdout"], fields["stderr"]) == ("about to fail\n", "on stderr\n")

    record = await endpoint.failure(too_long)
    assert record["type"] == "WalltimeExceeded"
    assert "walltime of 1 s" in record["message"]
    record = await endpoint.failure(exited)
    assert record["type"] == "WorkerLost"
    assert lost in record["message"]
    assert len(await endpoint.notices()) == 1003
    await endpoint.assert_settled()
