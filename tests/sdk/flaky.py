"""``FlakyProxy``: a real HTTP server on a loopback port that plays a script of faults (and
:class:`FlakyWsProxy`, its WebSocket twin in front of the ws service).

Each request takes the next step of the script; once the script is spent, every request is
forwarded to the upstream web service (or answered 503 when there is none). Steps:

* ``"503"``: answer 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After`` (:attr:`retry_after`);
* ``"drop"``: close the connection without answering (the client sees it dropped);
* ``"lost"``: forward the request, then close the connection without passing the answer on
  (the service did the work; the client never learns of it);
* ``"forward"``: forward the request and pass the answer on.

Every request is recorded (:attr:`FlakyProxy.seen`) with its headers and exact body bytes.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response

FORWARDED_HEADERS = ("authorization", "content-type", "idempotency-key")
RETURNED_HEADERS = ("content-type", "retry-after", "x-request-id")


@dataclass(frozen=True)
class Seen:
    step: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FlakyProxy:
    def __init__(
        self, upstream: str | None = None, script: Iterable[str] = (), *, retry_after: str = "0"
    ) -> None:
        self.upstream = urlsplit(upstream) if upstream else None
        self.retry_after = retry_after
        self.seen: list[Seen] = []
        self._script = deque(script)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def play(self, steps: Iterable[str]) -> None:
        """Add ``steps`` to the script."""
        with self._lock:
            self._script.extend(steps)

    def _next_step(self) -> str:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return "forward" if self.upstream is not None else "503"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length) if length else b""
        step = self._next_step()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.seen.append(Seen(step, request.command, request.path, headers, body))
        if step == "drop":
            request.close_connection = True
            return
        if step == "503":
            payload = {"code": "SERVICE_UNAVAILABLE", "message": "try later", "request_id": ""}
            reply = (503, {"retry-after": self.retry_after}, json.dumps(payload).encode())
        else:
            reply = self._forward(request.command, request.path, headers, body)
        if step == "lost":
            request.close_connection = True
            return
        status, reply_headers, content = reply
        request.send_response(status)
        for name, value in reply_headers.items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(content)))
        request.end_headers()
        request.wfile.write(content)

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.upstream is not None and self.upstream.hostname and self.upstream.port
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
            conn.request(method, path, body=body or None, headers=sent)
            answer = conn.getresponse()
            content = answer.read()
            kept = {k.lower(): v for k, v in answer.getheaders() if k.lower() in RETURNED_HEADERS}
            return answer.status, kept, content
        finally:
            conn.close()

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class FlakyWsProxy:
    """A WebSocket server in front of the real ws service: it refuses the first
    ``refuse`` handshakes with 503, answers the first ``unavailable`` subscriptions with an
    ``UNAVAILABLE`` error frame, then relays frames both ways."""

    def __init__(self, upstream: str, *, refuse: int = 0, unavailable: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.refuse = refuse
        self.unavailable = unavailable
        self.refused = 0
        self.unavailable_sent = 0
        self.relayed = 0
        self.url = ""
        self._server: Server | None = None

    def _process(self, connection: ServerConnection, request: WsRequest) -> Response | None:
        if self.refused >= self.refuse:
            return None
        self.refused += 1
        response = connection.respond(503, "try later\n")
        response.headers["Retry-After"] = "0"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        if self.unavailable_sent < self.unavailable:
            self.unavailable_sent += 1
            await ws.recv()  # the subscribe frame
            frame = {"type": "error", "code": "UNAVAILABLE", "message": "web service is down"}
            await ws.send(json.dumps(frame))
            await ws.wait_closed()
            return
        self.relayed += 1
        assert ws.request is not None
        headers = {"Authorization": ws.request.headers["Authorization"]}
        async with connect(self.upstream + ws.request.path, additional_headers=headers) as up:

            async def pump(source: Any, sink: Any) -> None:
                async for message in source:
                    await sink.send(message)

            tasks = [asyncio.create_task(pump(ws, up)), asyncio.create_task(pump(up, ws))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FlakyWsProxy:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._process)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
