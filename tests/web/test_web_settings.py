"""WebSettings: built from the environment, URLs normalised, bad values refused."""

from __future__ import annotations

import pytest

from service_common.errors import SettingsError
from web_service.settings import WebSettings, async_database_url

BASE = {"DATABASE_URL": "sqlite:///fx.db", "REDIS_URL": "redis://127.0.0.1:6379/0"}
AMQP = "amqp://fx:secret@rabbitmq:5672/%2F"


def test_defaults_from_the_minimal_environment() -> None:
    settings = WebSettings.from_env(BASE)
    assert settings == WebSettings(
        database_url="sqlite+aiosqlite:///fx.db", redis_url="redis://127.0.0.1:6379/0"
    )
    assert settings.key_prefix == "fx"
    assert settings.ws_url == ""
    assert settings.result_ttl_s == 7 * 24 * 3600
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.max_tasks_per_batch == 10_000
    assert settings.auth_cache_s == 10.0


def test_every_variable_is_read() -> None:
    settings = WebSettings.from_env(
        {
            **BASE,
            "FXBROKER_KEY_PREFIX": "prod",
            "FXBROKER_WS_URL": "wss://push.example.org",
            "FXBROKER_RESULT_TTL_S": "60",
            "FXBROKER_MAX_BODY_BYTES": "1000",
            "FXBROKER_MAX_TASKS_PER_BATCH": "7",
            "FXBROKER_AUTH_CACHE_S": "0.5",
            "FXBROKER_FUNCTION_CACHE_BYTES": "0",
        }
    )
    assert (
        settings.key_prefix,
        settings.ws_url,
        settings.result_ttl_s,
        settings.max_body_bytes,
        settings.max_tasks_per_batch,
        settings.auth_cache_s,
        settings.function_cache_bytes,
    ) == ("prod", "wss://push.example.org", 60, 1000, 7, 0.5, 0)


def test_the_ws_url_may_name_several_copies() -> None:
    several = "ws://a:8001,wss://b.example.org"
    assert WebSettings.from_env({**BASE, "FXBROKER_WS_URL": several}).ws_url == several


def test_the_issue_3_variables_are_read() -> None:
    settings = WebSettings.from_env(
        {
            **BASE,
            "FXBROKER_CATALOG_CACHE_S": "0",
            "FXBROKER_IDEMPOTENCY_TTL_S": "600",
            "FXBROKER_RATE_LIMIT_PER_S": "2.5",
            "FXBROKER_RATE_LIMIT_BURST": "9",
            "FXBROKER_GLOBUS_CLIENT_ID": "client",
            "FXBROKER_GLOBUS_CLIENT_SECRET": "secret",
        }
    )
    assert (
        settings.catalog_cache_s,
        settings.idempotency_ttl_s,
        settings.rate_limit_per_s,
        settings.rate_limit_burst,
        settings.globus_client_id,
        settings.globus_enabled,
    ) == (0.0, 600, 2.5, 9, "client", True)
    assert "secret" not in repr(settings)
    assert not WebSettings.from_env(BASE).globus_enabled


def test_executors_are_handed_the_public_amqp_url_when_there_is_one() -> None:
    public = "amqps://fx:secret@broker.example.org:5671/%2F"
    internal_only = WebSettings.from_env({**BASE, "FXBROKER_AMQP_URL": AMQP})
    both = WebSettings.from_env(
        {**BASE, "FXBROKER_AMQP_URL": AMQP, "FXBROKER_AMQP_PUBLIC_URL": public}
    )
    assert (internal_only.amqp_client_url, both.amqp_url, both.amqp_client_url) == (
        AMQP,
        AMQP,
        public,
    )
    assert WebSettings.from_env(BASE).amqp_client_url == ""
    assert "secret" not in repr(both)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@127.0.0.1/db", "postgresql+asyncpg://u:p@127.0.0.1/db"),
        ("postgres://u@127.0.0.1/db", "postgresql+asyncpg://u@127.0.0.1/db"),
        ("postgresql+asyncpg://u@127.0.0.1/db", "postgresql+asyncpg://u@127.0.0.1/db"),
        ("sqlite:////var/fx.db", "sqlite+aiosqlite:////var/fx.db"),
        ("sqlite+aiosqlite:///fx.db", "sqlite+aiosqlite:///fx.db"),
    ],
)
def test_database_urls_get_their_asyncio_driver(url: str, expected: str) -> None:
    assert async_database_url(url) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://127.0.0.1"},
        {"DATABASE_URL": "sqlite:///fx.db"},
        {**BASE, "DATABASE_URL": "mysql://127.0.0.1/db"},
        {**BASE, "DATABASE_URL": "fx.db"},
        {**BASE, "REDIS_URL": "http://127.0.0.1"},
        {**BASE, "FXBROKER_RESULT_TTL_S": "a week"},
        {**BASE, "FXBROKER_RESULT_TTL_S": "0"},
        {**BASE, "FXBROKER_MAX_TASKS_PER_BATCH": "1.5"},
        {**BASE, "FXBROKER_AUTH_CACHE_S": "-1"},
        {**BASE, "FXBROKER_WS_URL": "http://127.0.0.1:8001"},
        {**BASE, "FXBROKER_WS_URL": "ws://a:8001,http://b:8001"},
        {**BASE, "FXBROKER_WS_URL": "ws://a:8001,"},
        {**BASE, "FXBROKER_KEY_PREFIX": "a:b"},
        {**BASE, "FXBROKER_KEY_PREFIX": ""},
        {**BASE, "FXBROKER_GLOBUS_CLIENT_ID": "client"},
        {**BASE, "FXBROKER_RATE_LIMIT_PER_S": "-1"},
        {**BASE, "FXBROKER_RATE_LIMIT_BURST": "0"},
        {**BASE, "FXBROKER_IDEMPOTENCY_TTL_S": "0"},
        {**BASE, "FXBROKER_CATALOG_CACHE_S": "soon"},
        {**BASE, "FXBROKER_AMQP_URL": "http://127.0.0.1:5672"},
        {**BASE, "FXBROKER_AMQP_URL": AMQP, "FXBROKER_AMQP_PUBLIC_URL": "rabbitmq:5672"},
        {**BASE, "FXBROKER_AMQP_PUBLIC_URL": AMQP},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        WebSettings.from_env(env)


def test_settings_are_keyword_only_and_frozen() -> None:
    settings = WebSettings(database_url="sqlite:///fx.db", redis_url="redis://127.0.0.1")
    with pytest.raises(AttributeError):
        settings.key_prefix = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        WebSettings("sqlite:///fx.db", "redis://127.0.0.1")  # type: ignore[call-arg]
