"""``https://`` and ``wss://`` end to end, with a certificate authority made for the test.

``fxbroker web`` and ``fxbroker ws`` serve TLS themselves; the agent registers over https,
learns the ``wss://`` URL the web service announces and serves tasks through the gateway
over it, trusting the CA through ``FXBROKER_CA_FILE``. Each way a client can be told to
trust the CA is used by one client style (``ca_file=``, ``SSL_CERT_FILE``,
``FXBROKER_CA_FILE``); a client told nothing refuses the certificate at once, and plain
HTTP or WebSocket to the TLS ports fails without harming the services.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from fxbroker import AsyncClient, CertificateNotTrusted, Client, ConnectionFailed, Executor
from fxbroker.endpoints import heartbeat_online
from fxbroker.workload import async_double, square
from sdk._base import TaskOutcome
from sdk.results import ResultListener
from sdk.retry import Retry
from tests.e2e.conftest import Platform, running_platform
from tests.tls_certificates import Certificates, make_certificates

TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "FXBROKER_CA_FILE")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def secure(
    redis_url: str, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    with running_platform(
        redis_url, tmp_path_factory.mktemp("tls-platform"), tls=certificates
    ) as started:
        yield started


@pytest.fixture(autouse=True)
def _trust_nothing_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test says itself how its clients trust the CA; no config.json is found."""
    for name in TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FXBROKER_HOME", str(tmp_path / "home"))


def _alive(platform: Platform, certificates: Certificates) -> None:
    """The web service answers over https, and announces the ws service as wss://."""
    info = httpx.get(
        f"{platform.url}/v1/info",
        headers={"Authorization": f"Bearer {platform.token}"},
        verify=_context(certificates),
        timeout=10,
    )
    assert info.status_code == 200
    assert info.json()["ws_url"] == platform.ws_url


def _context(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca_file))


def test_the_services_serve_tls_and_announce_wss(
    secure: Platform, certificates: Certificates
) -> None:
    assert secure.url.startswith("https://") and secure.ws_url.startswith("wss://")
    _alive(secure, certificates)


def test_client_polls_over_https_trusting_ca_file(
    secure: Platform, certificates: Certificates
) -> None:
    with Client(secure.url, secure.token, ca_file=str(certificates.ca_file)) as client:
        fid = client.register_function(square)
        task_ids = [
            client.run(x, endpoint_id=secure.endpoint_id, function_id=fid) for x in range(5)
        ]
        results = client.wait(task_ids, timeout_s=60, poll_s=0.05)
        assert [results[t]["result"] for t in task_ids] == [x * x for x in range(5)]
        assert client.get_result(task_ids[3]) == 9


def test_endpoint_list_asks_for_the_heartbeat_over_https_trusting_the_ca_file(
    secure: Platform, certificates: Certificates
) -> None:
    """``fxbroker endpoint list`` verifies the certificate as every client does: trusting
    the endpoint's CA file it sees the endpoint online; trusting nothing it cannot tell."""
    ca_file = str(certificates.ca_file)
    _wait_online(secure, ca_file)  # True with the CA file, within 30 s
    assert heartbeat_online(secure.url, secure.token, secure.endpoint_id) is None


def _wait_online(platform: Platform, ca_file: str) -> None:
    """Until the platform's agent has beaten once (it starts with the platform)."""
    deadline = time.monotonic() + 30
    while not heartbeat_online(platform.url, platform.token, platform.endpoint_id,
                               ca_file=ca_file):  # fmt: skip
        assert time.monotonic() < deadline, "the endpoint never came online"
        time.sleep(0.1)


def test_async_client_gets_results_pushed_over_wss_trusting_ssl_cert_file(
    secure: Platform, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca_file))

    async def main() -> tuple[str, list[int], int]:
        async with AsyncClient(secure.url, secure.token) as ac:  # ws URL from /v1/info
            fid = await ac.register_function(square)
            values = await asyncio.wait_for(
                asyncio.gather(
                    *(ac.run(x, endpoint_id=secure.endpoint_id, function_id=fid) for x in range(20))
                ),
                60,
            )
            aid = await ac.register_function(async_double)
            doubled = await ac.run(21, endpoint_id=secure.endpoint_id, function_id=aid)
            assert ac.results.subscriptions >= 1
            return await ac.get_ws_url(), list(values), doubled

    ws_url, values, doubled = asyncio.run(main())
    assert ws_url == secure.ws_url
    assert values == [x * x for x in range(20)]
    assert doubled == 42


def test_executor_trusts_fxbroker_ca_file(
    secure: Platform, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FXBROKER_URL", secure.url)
    monkeypatch.setenv("FXBROKER_TOKEN", secure.token)
    monkeypatch.setenv("FXBROKER_CA_FILE", str(certificates.ca_file))
    with Executor(endpoint_id=secure.endpoint_id) as ex:
        assert list(ex.map(square, range(10), timeout=60)) == [x * x for x in range(10)]


def test_a_client_that_does_not_trust_the_ca_fails_at_once(
    secure: Platform, certificates: Certificates
) -> None:
    started = time.monotonic()
    with Client(secure.url, secure.token, retry_for_s=60) as client:
        with pytest.raises(CertificateNotTrusted) as refused:
            client.register_function(square)
    assert time.monotonic() - started < 10, "a refused certificate is not waited out"
    assert isinstance(refused.value, ConnectionFailed)
    message = str(refused.value)
    assert f"the TLS certificate of {secure.url} is not trusted" in message
    assert "certificate verify failed" in message
    assert "FXBROKER_CA_FILE" in message and "SSL_CERT_FILE" in message
    _alive(secure, certificates)


def test_an_async_client_that_does_not_trust_the_ca_fails_at_once(
    secure: Platform, certificates: Certificates
) -> None:
    async def register() -> str:
        async with AsyncClient(secure.url, secure.token, retry_for_s=60) as ac:
            return await ac.register_function(square)

    started = time.monotonic()
    with pytest.raises(CertificateNotTrusted) as refused:
        asyncio.run(register())
    assert time.monotonic() - started < 10, "a refused certificate is not waited out"
    message = str(refused.value)
    assert f"the TLS certificate of {secure.url} is not trusted" in message
    assert "certificate verify failed" in message and "SSL_CERT_FILE" in message
    _alive(secure, certificates)


def test_a_result_listener_that_does_not_trust_the_ca_fails_at_once(
    secure: Platform, certificates: Certificates
) -> None:
    with Client(secure.url, secure.token, ca_file=str(certificates.ca_file)) as client:
        task_id = client.run(
            4, endpoint_id=secure.endpoint_id, function_id=client.register_function(square)
        )
        group = client.task_group_id

    async def listen() -> TaskOutcome:
        async def ws_url() -> str:
            return secure.ws_url

        done: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        listener = ResultListener(
            ws_url=ws_url, token=secure.token, task_group_id=group, retry=Retry(retry_for_s=60)
        )
        listener.watch(task_id, done.set_result)
        try:
            return await asyncio.wait_for(done, 10)
        finally:
            await listener.aclose()

    outcome = asyncio.run(listen())
    assert isinstance(outcome.error, CertificateNotTrusted)
    assert outcome.error.url.startswith("wss://")
    assert "certificate verify failed" in str(outcome.error)
    _alive(secure, certificates)


def test_plain_http_and_ws_to_the_tls_ports_fail_cleanly(
    secure: Platform, certificates: Certificates
) -> None:
    web, ws = urlsplit(secure.url), urlsplit(secure.ws_url)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{web.netloc}/v1/info", timeout=10)
    with Client(f"http://{web.netloc}", secure.token, retry_for_s=0) as client:
        with pytest.raises(ConnectionFailed) as failed:
            client.register_function(square)
    assert not isinstance(failed.value, CertificateNotTrusted)

    async def plain_ws() -> None:
        async with connect(f"ws://{ws.netloc}/v1/results", open_timeout=10):
            pass

    with pytest.raises((OSError, WebSocketException)):
        asyncio.run(plain_ws())
    _alive(secure, certificates)
