"""The sync Client's HTTP transport (:mod:`sdk.transport`) against a small HTTP/1.1 server
in a thread: kept connections, one the server closed while idle, a held read's timeout, the
environment's proxy, and no credential but the token."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from fxbroker import APIError, Client
from sdk.transport import Transport, TransportError, env_proxy
from tests.conftest import free_port

PROXY_VARIABLES = [
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy",
]  # fmt: skip


@dataclass
class Seen:
    connections: int = 0
    lines: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    delay_s: float = 0.0
    close_after_answer: bool = False


def serve(seen: Seen) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            seen.connections += 1

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.lines.append(self.requestline)
            seen.authorizations.append(self.headers.get("Authorization"))
            time.sleep(seen.delay_s)
            reply = json.dumps({"path": self.path, "body": body.decode()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            self.wfile.flush()
            if seen.close_after_answer:  # as an idle timeout would, without saying so
                self.close_connection = True

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def service(no_proxy_env: None) -> Iterator[tuple[Seen, str]]:
    seen = Seen()
    server = serve(seen)
    try:
        yield seen, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def transport(url: str, timeout_s: float = 10.0) -> Transport:
    return Transport(url, {"Authorization": "Bearer t"}, timeout_s=timeout_s, ssl_context=None)


def test_requests_share_one_kept_connection(service: tuple[Seen, str]) -> None:
    seen, url = service
    http_ = transport(url + "/base/")
    try:
        for i in range(5):
            answer = http_.request("POST", f"/v1/x?i={i}", body=b"{}", headers={"X-A": "1"})
            assert answer.status == 200
            assert json.loads(answer.content) == {"path": f"/base/v1/x?i={i}", "body": "{}"}
            assert answer.headers["content-type"] == "application/json"
    finally:
        http_.close()
    assert seen.connections == 1
    assert seen.authorizations == ["Bearer t"] * 5


def test_a_connection_the_service_closed_while_idle_is_not_reused(
    service: tuple[Seen, str],
) -> None:
    seen, url = service
    seen.close_after_answer = True
    http_ = transport(url)
    try:
        for _ in range(3):
            assert http_.request("GET", "/v1/x", body=None, headers={}).status == 200
            time.sleep(0.05)  # the service's close has arrived
    finally:
        http_.close()
    assert seen.connections == 3


def test_a_held_answer_may_take_its_wait_beyond_the_timeout(service: tuple[Seen, str]) -> None:
    seen, url = service
    seen.delay_s = 0.6
    http_ = transport(url, timeout_s=0.2)
    try:
        assert http_.request("GET", "/v1/x", body=None, headers={}, held_s=5.0).status == 200
        with pytest.raises(TransportError) as late:
            http_.request("GET", "/v1/x", body=None, headers={})
    finally:
        http_.close()
    assert isinstance(late.value.__cause__, ReadTimeoutError)


def test_a_refused_connection_is_a_transport_error(no_proxy_env: None) -> None:
    http_ = transport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as refused:
        http_.request("GET", "/v1/x", body=None, headers={})
    assert isinstance(refused.value.__cause__, NewConnectionError)


def test_the_token_is_the_only_credential_sent(
    service: tuple[Seen, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, url = service
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with Client(url, "fxb_token", retry_for_s=0) as client, pytest.raises(APIError):
        client.get_task("00000000-0000-4000-8000-000000000000")  # the echo is no task info
    assert seen.authorizations == ["Bearer fxb_token"]


def test_requests_go_through_the_proxy_the_environment_names(
    service: tuple[Seen, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, proxy = service  # the echo server answers as a forwarding proxy would
    monkeypatch.setenv("HTTP_PROXY", proxy)
    task_id = "00000000-0000-4000-8000-000000000000"
    with Client("http://service.invalid:8000", "fxb_token", retry_for_s=0) as client:
        with pytest.raises(APIError):
            client.get_task(task_id)
    assert seen.lines == [f"GET http://service.invalid:8000/v1/tasks/{task_id} HTTP/1.1"]


def test_the_proxy_is_chosen_by_scheme_and_no_proxy(
    no_proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env_proxy("http://service.example:8000") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3129")
    assert env_proxy("http://service.example:8000") == "http://proxy.example:3128"
    assert env_proxy("https://service.example") == "http://proxy.example:3129"
    monkeypatch.setenv("NO_PROXY", "service.example")
    assert env_proxy("https://service.example") is None
    assert env_proxy("https://other.example") == "http://proxy.example:3129"
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("ALL_PROXY", "http://all.example:1080")
    assert env_proxy("https://other.example") == "http://all.example:1080"


def test_a_closed_transport_refuses_requests(service: tuple[Seen, str]) -> None:
    _, url = service
    http_ = transport(url)
    assert http_.request("GET", "/v1/x", body=None, headers={}).status == 200
    http_.close()
    with pytest.raises(RuntimeError, match="closed"):
        http_.request("GET", "/v1/x", body=None, headers={})
