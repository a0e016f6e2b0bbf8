"""The platform in process for SDK tests: web (uvicorn), ws service and agents, on loopback.

:class:`Stack` runs in the current event loop (``async with``); :func:`threaded` runs one in a
thread of its own, for the synchronous ``Client`` and the ``Executor``. Agents (through the ws
service's gateway, with their endpoint's credential, as in production) are started and
stopped by the test (:meth:`Stack.serve` keeps one running, :meth:`Stack.burst` runs one until
its endpoint's queue is empty), so a test decides exactly when tasks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from endpoint_agent.agent import Agent
from endpoint_agent.settings import AgentSettings
from sdk import _base
from sdk.keys import Keys
from tests.conftest import wait_for_port
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings
from ws_service.server import ResultServer
from ws_service.settings import WsSettings


@dataclass(frozen=True)
class Services:
    url: str
    ws_url: str
    token: str
    endpoint_id: str
    """Served by the agent that :meth:`Stack.serve` starts."""
    idle_endpoint_id: str
    """No agent serves it unless a test runs one: tasks there stay queued."""
    keys: Keys


class Stack:
    def __init__(
        self, *, database_url: str, redis_url: str, key_prefix: str, web_process: bool = False
    ) -> None:
        """``web_process``: run the web service as a process of its own (``fxbroker web``),
        which :meth:`kill_web` kills with SIGKILL and :meth:`start_web` starts again."""
        self.database_url = database_url
        self.redis_url = redis_url
        self.keys = Keys(key_prefix)
        self._exit = contextlib.AsyncExitStack()
        self._ws: ResultServer | None = None
        self.credentials: dict[str, str] = {}
        """Endpoint id -> its credential, for the agents the stack starts."""
        self._ws_port = 0
        self._web_process = web_process
        self._web: subprocess.Popen[bytes] | None = None
        self._web_port = 0
        self.services: Services | None = None

    @property
    def ws_server(self) -> ResultServer:
        """The ws service copy now running."""
        assert self._ws is not None
        return self._ws

    def _ws_settings(self, web_url: str, port: int) -> WsSettings:
        return WsSettings(
            redis_url=self.redis_url, web_url=web_url, key_prefix=self.keys.prefix, port=port,
            block_ms=1000,
        )  # fmt: skip

    async def __aenter__(self) -> Services:
        await asyncio.to_thread(upgrade, self.database_url)
        _, token = await create_user(self.database_url, "sdk-tester")
        sock = socket.socket()
        self._exit.callback(sock.close)
        try:
            return await self._start(sock, token)
        except BaseException:
            await self._exit.aclose()
            raise

    async def _start(self, sock: socket.socket, token: str) -> Services:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._ws = await self._exit.enter_async_context(ResultServer(self._ws_settings(url, 0)))
        self._ws_port = self._ws.port
        ws_url = f"ws://127.0.0.1:{self._ws_port}"
        settings = WebSettings(
            database_url=self.database_url, redis_url=self.redis_url,
            key_prefix=self.keys.prefix, ws_url=ws_url,
        )  # fmt: skip
        if self._web_process:
            self._web_port = sock.getsockname()[1]
            sock.close()
            self._exit.push_async_callback(self.kill_web)
            await self.start_web()
        else:
            await self._serve_web(settings, sock)
        async with httpx.AsyncClient(base_url=url, headers=_base.auth_headers(token)) as http:
            ids = []
            for name in ("served", "idle"):
                reply = await http.post("/v1/endpoints", json={"name": name})
                ids.append(_base.parse_endpoint_id(reply.json()))
                self.credentials[ids[-1]] = reply.json()["credential"]
        self.services = Services(url, ws_url, token, ids[0], ids[1], self.keys)
        return self.services

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    async def _serve_web(self, settings: WebSettings, sock: socket.socket) -> None:
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        main = asyncio.create_task(server.main_loop())

        async def stop() -> None:
            server.should_exit = True
            await main
            await server.shutdown(sockets=[sock])

        self._exit.push_async_callback(stop)

    async def start_web(self) -> None:
        """Start the web service process on its port; return once it accepts connections."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "FXBROKER_KEY_PREFIX": self.keys.prefix,
            "FXBROKER_WS_URL": f"ws://127.0.0.1:{self._ws_port}",
        }
        command = [sys.executable, "-m", "fxbroker.cli", "web", "--port", str(self._web_port)]
        self._web = await asyncio.to_thread(
            subprocess.Popen, command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.to_thread(wait_for_port, self._web_port, 60.0)

    async def kill_web(self) -> None:
        """SIGKILL the web service process (no shutdown at all) and reap it."""
        web, self._web = self._web, None
        if web is not None and web.poll() is None:
            web.kill()
        if web is not None:
            await asyncio.to_thread(web.wait)

    def _agent(self, endpoint_id: str, workers: int = 4) -> Agent:
        """An agent of ``endpoint_id`` that reaches it through the ws service's gateway."""
        return Agent(
            AgentSettings(
                endpoint_id=endpoint_id, ws_url=self.services.ws_url,
                credential=self.credentials[endpoint_id],
                engine="thread", workers=workers, block_ms=200,
            )
        )  # fmt: skip

    async def serve(self, endpoint_id: str, *, workers: int = 4) -> None:
        """Keep an agent (``workers`` threads) serving ``endpoint_id`` until the stack closes."""
        agent = await self._exit.enter_async_context(self._agent(endpoint_id, workers))
        task = asyncio.create_task(agent.run())

        async def stop() -> None:
            agent.stop()
            await task

        self._exit.push_async_callback(stop)

    async def burst(self, endpoint_id: str) -> None:
        """Run every task queued on ``endpoint_id`` now, then return."""
        async with self._agent(endpoint_id) as agent:
            await agent.run(burst=True)

    async def restart_ws(self) -> None:
        """Stop the ws service (its connections close) and start it again on the same port."""
        await self.stop_ws()
        await self.start_ws()

    async def stop_ws(self) -> None:
        """Stop the ws service: its connections close and its port refuses new ones."""
        assert self._ws is not None
        await self._ws.__aexit__(None, None, None)

    async def start_ws(self) -> None:
        """Start the ws service again on the port it had."""
        assert self.services is not None
        self._ws = ResultServer(self._ws_settings(self.services.url, self._ws_port))
        await self._ws.__aenter__()
        self._exit.push_async_callback(self._ws.__aexit__, None, None, None)


@contextlib.contextmanager
def threaded(stack: Stack, *, serve: bool = True) -> Iterator[tuple[Services, Runner]]:
    """Run ``stack`` (and an agent on its served endpoint) in a thread of its own."""
    runner = Runner()
    try:
        services = runner.call(stack.__aenter__())
        try:
            if serve:
                runner.call(stack.serve(services.endpoint_id))
            yield services, runner
        finally:
            runner.call(stack.__aexit__(None, None, None))
    finally:
        runner.close()


class Runner:
    """An event loop in a thread; :meth:`call` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
