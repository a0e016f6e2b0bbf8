"""The whole platform in one process: what ``fxbroker dev`` and ``fxbroker demo`` run.

Web service (uvicorn), ws_service, one endpoint agent and, given an AMQP URL
(``FXBROKER_AMQP_URL``), the AMQP result publisher share one event loop; Redis is the
embedded one unless a URL is given, SQL a SQLite file in the home folder unless a URL
is given. The agent reaches its endpoint as any other does: through ws_service's gateway,
with the endpoint's credential, never with the Redis URL. On start it makes sure a user
exists, registers the local endpoint, and writes the URL, token and endpoint id where the
SDK looks (``$FXBROKER_HOME/config.json``), its database, Redis and key prefix where the
``fxbroker`` commands look (``stack.json``), and the local endpoint's id, credential and
this process's pid in ``endpoints/local/``, so ``fxbroker endpoint list`` shows it and
``fxbroker endpoint stop local`` stops the stack (:mod:`fxbroker.home` draws the folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from amqp_publisher.publisher import Publisher
from amqp_publisher.settings import PublisherSettings
from endpoint_agent.agent import Agent
from endpoint_agent.settings import AgentSettings
from fxbroker.embedded import EmbeddedRedis, listening_socket
from fxbroker.endpoints import (
    endpoint_dir,
    pid_file,
    store_credential,
    store_endpoint_id,
    stored_credential,
)
from fxbroker.home import StackRecord, sqlite_url, write_stack_record
from sdk.config import read_config, write_config
from service_common.tokens import ENDPOINT_SESSION_PATH
from web_service.accounts import UserExists, create_user, issue_token
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings
from ws_service.server import ResultServer
from ws_service.settings import WsSettings

DEV_USER = "dev"
ENDPOINT_NAME = "local"


@dataclass(frozen=True, kw_only=True)
class StackSettings:
    """What to run. Port 0 picks a free port."""

    home: Path
    host: str = "127.0.0.1"
    web_port: int = 8000
    ws_port: int = 8001
    redis_url: str | None = None
    database_url: str | None = None
    redis_binary: bool = True
    amqp_url: str | None = None
    """RabbitMQ for Globus Compute Executor results: the web service declares queues on it
    and an AMQP publisher runs in the stack (None: neither)."""
    key_prefix: str = "fx"
    engine: str = "process"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_concurrency: int = 1000


@dataclass(frozen=True)
class StackInfo:
    """Where the running platform is."""

    url: str
    ws_url: str
    token: str
    endpoint_id: str
    redis_url: str
    database_url: str
    redis_kind: str


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the stack's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DevStack:
    """``async with DevStack(settings) as stack:`` runs web, ws and an agent inside the block."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self._exit = contextlib.AsyncExitStack()
        self._info: StackInfo | None = None

    @property
    def info(self) -> StackInfo:
        if self._info is None:
            raise RuntimeError("the stack is not running")
        return self._info

    async def __aenter__(self) -> DevStack:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        endpoint_folder = endpoint_dir(s.home, ENDPOINT_NAME)
        self._exit.enter_context(pid_file(endpoint_folder, ENDPOINT_NAME))
        redis_url, redis_kind = s.redis_url, "external"
        if redis_url is None:
            embedded = EmbeddedRedis(s.home / "redis", use_binary=s.redis_binary)
            await asyncio.to_thread(embedded.start)
            self._exit.callback(embedded.stop)
            redis_url, redis_kind = embedded.url, embedded.kind
        database_url = s.database_url or sqlite_url(s.home)
        await asyncio.to_thread(upgrade, database_url)

        # Both listening sockets are bound first (port 0 picks a free one): each service must
        # know the other's address before it starts, and a port chosen now but bound later
        # could be taken in between.
        web_sock = self._exit.enter_context(listening_socket(s.host, s.web_port))
        ws_sock = self._exit.enter_context(listening_socket(s.host, s.ws_port))
        web_port, ws_port = web_sock.getsockname()[1], ws_sock.getsockname()[1]
        url, ws_url = f"http://{s.host}:{web_port}", f"ws://{s.host}:{ws_port}"
        web_settings = WebSettings(
            database_url=database_url, redis_url=redis_url, key_prefix=s.key_prefix, ws_url=ws_url,
            amqp_url=s.amqp_url or "",
        )  # fmt: skip
        await self._serve_web(web_settings, web_sock)
        if s.amqp_url:
            publisher = Publisher(
                PublisherSettings(redis_url=redis_url, key_prefix=s.key_prefix,
                                  amqp_url=s.amqp_url)
            )  # fmt: skip
            await self._exit.enter_async_context(publisher)
            self._background(publisher.run(), "amqp_publisher")

        ws = ResultServer(
            WsSettings(redis_url=redis_url, web_url=url, key_prefix=s.key_prefix,
                       host=s.host, port=ws_port),
            sock=ws_sock,
        )  # fmt: skip
        await self._exit.enter_async_context(ws)
        self._background(ws.serve_forever(), "ws_service")

        token = await self._token(database_url, url)
        endpoint_id, credential = await self._register_endpoint(url, token)
        credential = await self._credential(url, token, endpoint_id, credential)
        store_endpoint_id(endpoint_folder, endpoint_id)
        store_credential(endpoint_folder, credential)
        agent = Agent(
            AgentSettings(
                endpoint_id=endpoint_id, ws_url=ws_url, credential=credential,
                engine="thread" if s.engine == "thread" else "process",
                workers=s.workers, max_concurrency=s.max_concurrency,
            )
        )  # fmt: skip
        await self._exit.enter_async_context(agent)
        agent_task = self._background(agent.run(), "endpoint_agent")

        async def stop_agent() -> None:
            agent.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await agent_task

        self._exit.push_async_callback(stop_agent)
        write_stack_record(s.home, StackRecord(database_url=database_url, redis_url=redis_url,
                                               key_prefix=s.key_prefix))  # fmt: skip
        write_config(s.home, url=url, ws_url=ws_url, token=token, endpoint_id=endpoint_id)
        self._info = StackInfo(
            url=url, ws_url=ws_url, token=token, endpoint_id=endpoint_id,
            redis_url=redis_url, database_url=database_url, redis_kind=redis_kind,
        )  # fmt: skip

    async def dashboard_sign_in_link(self) -> str:
        """A one-time link that signs a browser in to the dashboard as the dev user (the
        token stays out of it: the link carries a code the web service takes back on use)."""
        info = self.info
        async with httpx.AsyncClient(base_url=info.url) as http:
            reply = await http.post(
                "/dashboard/api/codes", headers={"Authorization": f"Bearer {info.token}"}
            )
        reply.raise_for_status()
        return f"{info.url}{reply.json()['path']}"

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._exit.push_async_callback(cancel)
        return task

    async def _serve_web(self, settings: WebSettings, sock: socket.socket) -> None:
        config = uvicorn.Config(
            create_app(settings), log_level="warning", lifespan="on",
        )  # fmt: skip
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="web_service")

        async def shutdown() -> None:
            server.should_exit = True
            await task

        self._exit.push_async_callback(shutdown)
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the web service stopped while starting")
            await asyncio.sleep(0.01)

    async def _token(self, database_url: str, url: str) -> str:
        """Reuse the token of the last run when it still works, else make one."""
        token = read_config(self.settings.home).get("token", "")
        if token:
            async with httpx.AsyncClient(base_url=url) as http:
                reply = await http.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            if reply.status_code == 200:
                return token
        try:
            _, token = await create_user(database_url, DEV_USER)
        except UserExists:
            token = await issue_token(database_url, DEV_USER)
        return token

    async def _credential(self, url: str, token: str, endpoint_id: str, issued: str | None) -> str:
        """The local endpoint's credential: the one this run was issued, else the one an
        earlier run stored while it still opens the endpoint, else a new one (rotated)."""
        if issued is not None:
            return issued
        folder = endpoint_dir(self.settings.home, ENDPOINT_NAME)
        stored = stored_credential(folder)
        async with httpx.AsyncClient(base_url=url) as http:
            if stored is not None:
                reply = await http.get(
                    ENDPOINT_SESSION_PATH, headers={"Authorization": f"Bearer {stored}"}
                )
                if reply.status_code == 200 and reply.json()["endpoint_id"] == endpoint_id:
                    return stored
            reply = await http.post(
                f"/v1/endpoints/{endpoint_id}/credential",
                headers={"Authorization": f"Bearer {token}"},
            )
        reply.raise_for_status()
        return str(reply.json()["credential"])

    async def _register_endpoint(self, url: str, token: str) -> tuple[str, str | None]:
        """The local endpoint's id, and its credential when this run created it."""
        async with httpx.AsyncClient(base_url=url) as http:
            reply = await http.post(
                "/v1/endpoints",
                json={"name": ENDPOINT_NAME},
                headers={"Authorization": f"Bearer {token}"},
            )
        reply.raise_for_status()
        body = reply.json()
        return body["endpoint_id"], body.get("credential")
