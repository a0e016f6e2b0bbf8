"""A lightweight client of the agent <-> gateway protocol, built on the codec, and the real
stack it talks to: the web service under uvicorn (credentials, functions, submits), the
ws_service with its gateway on a free port, real Redis; a snapshot of a test's Redis keys."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from sdk.keys import AGENT_GROUP, Keys
from sdk.serialize import pack_payload, serialize
from sdk.states import TaskState
from service_common.agent_protocol import (
    AGENT_PATH,
    SUPPORTED_VERSIONS,
    Capacity,
    Credit,
    DeliveryRef,
    Frame,
    GatewayFrame,
    Hello,
    Outcomes,
    Settled,
    Task,
    TaskOutcome,
    Tasks,
    Welcome,
    decode_gateway_frame,
    encode,
)
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings
from ws_service.server import ResultServer
from ws_service.settings import WsSettings

FRAME_WAIT_S = 10.0
"""A safety net so a broken gateway fails a test instead of hanging it; no timing claim."""

F = TypeVar("F", bound=GatewayFrame)


def double(x: int) -> int:
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


@asynccontextmanager
async def web_service(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[str]:
    """The real web service on a free loopback port; yields its base URL."""
    app = create_app(
        WebSettings(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


@dataclass
class Owner:
    """A user of the web service, with the calls the tests need."""

    http: httpx.AsyncClient

    async def function(self, fn: Any = double) -> str:
        reply = await self.http.post(
            "/v1/functions", json={"function_name": fn.__name__, "function_code": serialize(fn)}
        )
        reply.raise_for_status()
        return str(reply.json()["function_id"])

    async def endpoint(self, name: str = "gpu") -> tuple[str, str]:
        """A new endpoint: (endpoint id, its credential)."""
        reply = await self.http.post("/v1/endpoints", json={"name": name})
        reply.raise_for_status()
        return reply.json()["endpoint_id"], reply.json()["credential"]

    async def submit(
        self, endpoint_id: str, function_id: str, count: int, **extra: Any
    ) -> tuple[str, list[str]]:
        tasks = [
            {"function_id": function_id, "payload": pack_payload((i,)), **extra}
            for i in range(count)
        ]
        reply = await self.http.post(f"/v1/endpoints/{endpoint_id}/submit", json={"tasks": tasks})
        reply.raise_for_status()
        return reply.json()["task_group_id"], reply.json()["task_ids"]


def hello(agent: str = "agent-1", **changes: Any) -> Hello:
    frame = Hello(
        versions=SUPPORTED_VERSIONS,
        agent=agent,
        host="node-1",
        version="test",
        capacity=Capacity(engine="process", workers=2, max_concurrency=4),
    )
    return replace(frame, **changes)


def success(task: Task | DeliveryRef, value: int = 0) -> TaskOutcome:
    return TaskOutcome(
        task.task_id,
        task.delivery_id,
        TaskState.SUCCESS,
        completed_at=time.time(),
        result=serialize(value),
    )


class AgentClient:
    """One agent's connection to the gateway; frames go through the protocol's codec."""

    def __init__(self, ws: ClientConnection, welcome: Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self.codes: dict[str, str] = {}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, ws_url: str, credential: str, greeting: Hello | None = None
    ) -> AsyncIterator[AgentClient]:
        async with connect(
            ws_url + AGENT_PATH,
            additional_headers={"Authorization": f"Bearer {credential}"},
            max_size=None,
        ) as ws:
            await ws.send(encode(greeting or hello()))
            welcome = await _recv(ws, Welcome)
            yield cls(ws, welcome)

    async def send(self, frame: Frame) -> None:
        await self.ws.send(encode(frame))

    async def recv(self, kind: type[F]) -> F:
        return await _recv(self.ws, kind)

    async def take(self, count: int, *, grant: int | None = None) -> list[Task]:
        """Grant ``grant`` (default ``count``) and receive windows until ``count`` tasks came."""
        await self.send(Credit(grant or count))
        tasks: list[Task] = []
        while len(tasks) < count:
            window = await self.recv(Tasks)
            self.codes.update({c.function_id: c.code for c in window.functions})
            tasks.extend(window.tasks)
        return tasks

    async def report(self, outcomes: Sequence[TaskOutcome]) -> Settled:
        await self.send(Outcomes(tuple(outcomes)))
        return await self.recv(Settled)


async def _recv(ws: ClientConnection, kind: type[F]) -> F:
    """The next frame, which must be a ``kind``; the gateway's word that a grant found the
    stream empty (an empty ``tasks`` frame, which may come at any time) is passed over."""
    async with asyncio.timeout(FRAME_WAIT_S):
        while True:
            frame = decode_gateway_frame(await ws.recv())
            if not (isinstance(frame, Tasks) and not frame.tasks):
                break
    assert isinstance(frame, kind), frame
    return frame


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Stack:
    """The web service with two users (ann, bob), and the settings of ws_service copies."""

    web_url: str
    ann: Owner
    bob: Owner
    ann_token: str
    settings: WsSettings

    def server(self, **changes: Any) -> ResultServer:
        return ResultServer(WsSettings(**{**self.settings.__dict__, **changes}))

    @asynccontextmanager
    async def ws(self, **changes: Any) -> AsyncIterator[str]:
        """A ws_service copy (with its gateway) on a free port; yields its ws:// URL."""
        async with self.server(**changes) as server:
            yield f"ws://127.0.0.1:{server.port}"


@asynccontextmanager
async def running_stack(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Stack]:
    """The web service on a free port with users ann and bob (what the ``stack`` fixture
    of these tests yields)."""
    await asyncio.to_thread(upgrade, database_url)
    _, ann_token = await create_user(database_url, "ann")
    _, bob_token = await create_user(database_url, "bob")
    async with web_service(database_url, redis_url, key_prefix) as web_url:
        async with (
            httpx.AsyncClient(base_url=web_url, headers=bearer(ann_token)) as ann,
            httpx.AsyncClient(base_url=web_url, headers=bearer(bob_token)) as bob,
        ):
            settings = WsSettings(
                redis_url=redis_url,
                web_url=web_url,
                key_prefix=key_prefix,
                port=0,
                block_ms=1000,
                client_name=unique("fxt-ws"),
                drain_timeout_s=5.0,
            )
            yield Stack(web_url, Owner(ann), Owner(bob), ann_token, settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def snapshot(aredis: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """Every key of this test and its value, to show that nothing changed."""
    found: dict[str, Any] = {}
    async for key in aredis.scan_iter(match=keys.pattern(), count=1000):
        kind = await aredis.type(key)
        if kind == "hash":
            found[key] = await aredis.hgetall(key)
        elif kind == "stream":
            found[key] = (
                await aredis.xrange(key),
                await aredis.xpending(key, AGENT_GROUP) if await _has_group(aredis, key) else None,
            )
        elif kind == "string":
            found[key] = await aredis.get(key)
        elif kind == "set":
            found[key] = await aredis.smembers(key)
        elif kind == "list":
            found[key] = await aredis.lrange(key, 0, -1)
    return found


async def _has_group(aredis: aioredis.Redis, key: str) -> bool:
    return any(g["name"] == AGENT_GROUP for g in await aredis.xinfo_groups(key))
