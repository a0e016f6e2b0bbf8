"""A lightweight client of the agent <-> gateway protocol, built on the codec, and the real
stack it talks to: the web service under uvicorn (credentials, functions, submits), the
ws_service with its gateway on a free port, real Redis."""

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
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

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
from web_service.app import create_app
from web_service.settings import WebSettings

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
    async with asyncio.timeout(FRAME_WAIT_S):
        frame = decode_gateway_frame(await ws.recv())
    assert isinstance(frame, kind), frame
    return frame


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
