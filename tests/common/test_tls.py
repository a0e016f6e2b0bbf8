"""TLS settings and contexts: the services' certificate pair, the clients' CA file, and a
refused certificate found inside the libraries' errors. Real files and a real handshake on
loopback; the end-to-end runs are in ``tests/e2e/test_tls.py``."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

from fxbroker import ConfigurationError
from sdk import tls as client_tls
from sdk.config import ClientConfig
from service_common import tls as server_tls
from service_common.errors import SettingsError
from tests.tls_certificates import Certificates, make_certificates
from web_service.settings import WebSettings
from ws_service.settings import WsSettings

WEB = {"DATABASE_URL": "sqlite:///fx.db", "REDIS_URL": "redis://127.0.0.1:6379/0"}
WS = {"REDIS_URL": "redis://127.0.0.1:6379/0", "FXBROKER_WEB_URL": "https://127.0.0.1:8000"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Another CA and certificate: the wrong key for ``certificates``' certificate."""
    return make_certificates(tmp_path_factory.mktemp("strangers"), name="stranger")


# -- the services' certificate and key --------------------------------------------------


@pytest.mark.parametrize("settings", [WebSettings, WsSettings])
def test_both_services_read_the_pair(
    settings: type[WebSettings] | type[WsSettings], certificates: Certificates
) -> None:
    base = WEB if settings is WebSettings else WS
    tls_env = {"FXBROKER_TLS_CERT": str(certificates.cert_file),
               "FXBROKER_TLS_KEY": str(certificates.key_file)}  # fmt: skip
    read = settings.from_env({**base, **tls_env})
    assert read.tls_cert == str(certificates.cert_file)
    assert read.tls_key == str(certificates.key_file)
    plain = settings.from_env(base)
    assert (plain.tls_cert, plain.tls_key) == ("", "")


@pytest.mark.parametrize("settings", [WebSettings, WsSettings])
@pytest.mark.parametrize("given", ["FXBROKER_TLS_CERT", "FXBROKER_TLS_KEY"])
def test_one_of_the_pair_alone_is_refused_naming_both(
    settings: type[WebSettings] | type[WsSettings], given: str
) -> None:
    base = WEB if settings is WebSettings else WS
    with pytest.raises(SettingsError) as refused:
        settings.from_env({**base, given: "server.pem"})
    assert "FXBROKER_TLS_CERT" in str(refused.value)
    assert "FXBROKER_TLS_KEY" in str(refused.value)


def test_missing_files_are_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\(FXBROKER_TLS_CERT\).*\(FXBROKER_TLS_KEY\)"):
        server_tls.server_context(str(tmp_path / "no.pem"), str(tmp_path / "no.key"))


def test_a_key_that_is_not_the_certificates_is_a_settings_error(
    certificates: Certificates, strangers: Certificates
) -> None:
    with pytest.raises(SettingsError, match="cannot be loaded"):
        server_tls.server_context(str(certificates.cert_file), str(strangers.key_file))


# -- the clients' CA file ---------------------------------------------------------------


def test_ca_file_argument_beats_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FXBROKER_HOME", str(tmp_path))
    monkeypatch.setenv("FXBROKER_CA_FILE", "from-env.pem")
    config = ClientConfig.from_env(url="https://127.0.0.1:1", token="t")
    assert config.ca_file == "from-env.pem"
    given = ClientConfig.from_env(url="https://127.0.0.1:1", token="t", ca_file="given.pem")
    assert given.ca_file == "given.pem"
    monkeypatch.delenv("FXBROKER_CA_FILE")
    assert ClientConfig.from_env(url="https://127.0.0.1:1", token="t").ca_file is None


def test_an_unloadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    assert client_tls.client_context(None) is None
    with pytest.raises(ConfigurationError, match="FXBROKER_CA_FILE"):
        client_tls.client_context(str(tmp_path / "missing.pem"))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("no certificate here\n")
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        client_tls.client_context(str(not_pem))


def test_the_ca_file_context_verifies(certificates: Certificates) -> None:
    context = client_tls.client_context(str(certificates.ca_file))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


# -- a refused certificate, found inside httpx's error ----------------------------------


async def _serve_tls(certificates: Certificates) -> asyncio.Server:
    context = server_tls.server_context(str(certificates.cert_file), str(certificates.key_file))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)


async def test_httpx_errors_are_told_apart(
    certificates: Certificates, strangers: Certificates
) -> None:
    server = await _serve_tls(certificates)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        trusted = client_tls.client_context(str(certificates.ca_file))
        assert trusted is not None
        async with httpx.AsyncClient(verify=trusted) as http:
            assert (await http.get(url)).status_code == 204
        wrong = client_tls.client_context(str(strangers.ca_file))
        assert wrong is not None
        async with httpx.AsyncClient(verify=wrong) as http:
            with pytest.raises(httpx.ConnectError) as refused:
                await http.get(url)
        found = client_tls.certificate_error(refused.value)
        assert isinstance(found, ssl.SSLCertVerificationError)
        assert "unable to get local issuer certificate" in client_tls.untrusted(found)
        assert client_tls.certificate_error(httpx.ConnectError("connection refused")) is None
    finally:
        server.close()
        await server.wait_closed()


def test_websockets_options_only_for_wss(certificates: Certificates) -> None:
    context = client_tls.client_context(str(certificates.ca_file))
    assert client_tls.connect_options("wss://h:1/v1/results", context) == {"ssl": context}
    assert client_tls.connect_options("ws://h:1/v1/results", context) == {}
    assert client_tls.connect_options("wss://h:1/v1/results", None) == {}
