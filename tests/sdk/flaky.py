"""``FlakyProxy``: a real HTTP server on a loopback port that plays a script of faults.

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

import http.client
import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

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
