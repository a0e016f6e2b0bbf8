"""WsSettings: keyword-only, validated, built from an environment mapping."""

from __future__ import annotations

import dataclasses

import pytest

from service_common.errors import SettingsError
from ws_service.settings import WsSettings

BASE = {"REDIS_URL": "redis://127.0.0.1:6379/0", "FXBROKER_WEB_URL": "http://127.0.0.1:8000"}


def test_defaults_from_a_minimal_environment() -> None:
    settings = WsSettings.from_env(BASE)
    assert settings == WsSettings(
        redis_url="redis://127.0.0.1:6379/0", web_url="http://127.0.0.1:8000"
    )
    assert (settings.key_prefix, settings.host, settings.port) == ("fx", "127.0.0.1", 8001)
    assert (settings.block_ms, settings.batch_max, settings.auth_cache_s) == (5000, 1000, 30.0)
    assert settings.max_frame_bytes > 10 * 1024 * 1024
    assert settings.compression == "none"


def test_every_variable_is_read() -> None:
    env = BASE | {
        "FXBROKER_KEY_PREFIX": "px",
        "FXBROKER_WS_HOST": "127.0.0.2",
        "FXBROKER_WS_PORT": "0",
        "FXBROKER_WS_AUTH_CACHE_S": "1.5",
        "FXBROKER_WS_AUTH_TIMEOUT_S": "2.5",
        "FXBROKER_WS_BLOCK_MS": "250",
        "FXBROKER_WS_BATCH_MAX": "10",
        "FXBROKER_WS_MAX_SUBSCRIPTIONS": "3",
        "FXBROKER_WS_PING_INTERVAL_S": "7",
        "FXBROKER_WS_PING_TIMEOUT_S": "3",
        "FXBROKER_WS_MAX_FRAME_BYTES": "2048",
        "FXBROKER_WS_CLIENT_NAME": "ws-a",
        "FXBROKER_WS_GATEWAY_REDIS_CONNECTIONS": "4",
        "FXBROKER_LEASE_MS": "900",
        "FXBROKER_MAX_ATTEMPTS": "5",
        "FXBROKER_HEARTBEAT_S": "0.5",
        "FXBROKER_RESULT_TTL_S": "60",
        "FXBROKER_WS_DRAIN_TIMEOUT_S": "4",
        "FXBROKER_WS_COMPRESSION": "deflate",
        "FXBROKER_TLS_CERT": "server.pem",
        "FXBROKER_TLS_KEY": "server.key",
    }
    settings = WsSettings.from_env(env)
    assert dataclasses.asdict(settings) == {
        "redis_url": BASE["REDIS_URL"],
        "web_url": BASE["FXBROKER_WEB_URL"],
        "key_prefix": "px",
        "host": "127.0.0.2",
        "port": 0,
        "tls_cert": "server.pem",
        "tls_key": "server.key",
        "auth_cache_s": 1.5,
        "auth_timeout_s": 2.5,
        "block_ms": 250,
        "batch_max": 10,
        "max_subscriptions": 3,
        "ping_interval_s": 7.0,
        "ping_timeout_s": 3.0,
        "max_frame_bytes": 2048,
        "compression": "deflate",
        "client_name": "ws-a",
        "gateway_redis_connections": 4,
        "lease_ms": 900,
        "max_attempts": 5,
        "heartbeat_s": 0.5,
        "result_ttl_s": 60,
        "drain_timeout_s": 4.0,
    }


@pytest.mark.parametrize("missing", ["REDIS_URL", "FXBROKER_WEB_URL"])
def test_required_variables(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        WsSettings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FXBROKER_WS_PORT", "http"),
        ("FXBROKER_WS_PORT", "70000"),
        ("FXBROKER_WS_BLOCK_MS", "1.5"),
        ("FXBROKER_WS_BATCH_MAX", "0"),
        ("FXBROKER_WS_AUTH_CACHE_S", "soon"),
        ("FXBROKER_WS_PING_TIMEOUT_S", "0"),
        ("FXBROKER_WS_COMPRESSION", "gzip"),
    ],
)
def test_malformed_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError):
        WsSettings.from_env(BASE | {name: value})


def test_settings_are_frozen_and_keyword_only() -> None:
    settings = WsSettings.from_env(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        WsSettings("redis://127.0.0.1:6379/0", "http://127.0.0.1:8000")  # type: ignore[call-arg]
