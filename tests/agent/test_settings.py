"""AgentSettings: defaults, validation, and from_env."""

from __future__ import annotations

import os
import socket

import pytest

from endpoint_agent import AgentSettings
from service_common.errors import SettingsError

REQUIRED = {"FXBROKER_ENDPOINT_ID": "ep-1", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_defaults_are_computed_at_construction() -> None:
    settings = AgentSettings(endpoint_id="ep-1", redis_url="redis://127.0.0.1:6379/0")
    assert settings.workers == (os.cpu_count() or 1)
    assert settings.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert (settings.engine, settings.key_prefix, settings.max_concurrency) == (
        "process",
        "fx",
        1000,
    )
    assert settings.capacity == settings.workers + 1000
    assert (settings.lease_ms, settings.max_attempts, settings.walltime_s) == (30_000, 3, None)
    assert (settings.max_result_bytes, settings.max_output_chars) == (10 * 1024 * 1024, 65536)
    assert (settings.accelerators, settings.allowed_functions) == ((), None)


def test_from_env_reads_every_setting() -> None:
    settings = AgentSettings.from_env(
        {
            **REQUIRED,
            "FXBROKER_KEY_PREFIX": "fxp",
            "FXBROKER_ENGINE": "thread",
            "FXBROKER_WORKERS": "3",
            "FXBROKER_MAX_CONCURRENCY": "50",
            "FXBROKER_HEARTBEAT_S": "0.5",
            "FXBROKER_BLOCK_MS": "250",
            "FXBROKER_RESULT_TTL_S": "60",
            "FXBROKER_CONSUMER": "gpu-node-7",
            "FXBROKER_ALLOWED_STRATEGIES": "00, 11,st",
            "FXBROKER_ALLOWED_FUNCTIONS": "fn-1,fn-2",
            "FXBROKER_WALLTIME_S": "90",
            "FXBROKER_LEASE_MS": "5000",
            "FXBROKER_MAX_ATTEMPTS": "5",
            "FXBROKER_DRAIN_GRACE_S": "2.5",
            "FXBROKER_MAX_RESULT_BYTES": "1000",
            "FXBROKER_MAX_OUTPUT_CHARS": "10",
        }
    )
    assert settings == AgentSettings(
        endpoint_id="ep-1",
        redis_url="redis://127.0.0.1:6379/0",
        key_prefix="fxp",
        engine="thread",
        workers=3,
        max_concurrency=50,
        heartbeat_s=0.5,
        block_ms=250,
        result_ttl_s=60,
        consumer="gpu-node-7",
        allowed_strategies=frozenset({"00", "11", "st"}),
        allowed_functions=frozenset({"fn-1", "fn-2"}),
        walltime_s=90.0,
        lease_ms=5000,
        max_attempts=5,
        drain_grace_s=2.5,
        max_result_bytes=1000,
        max_output_chars=10,
    )


def test_accelerators_from_env_pin_one_process_each() -> None:
    settings = AgentSettings.from_env({**REQUIRED, "FXBROKER_ACCELERATORS": "0, 1"})
    assert (settings.accelerators, settings.workers) == (("0", "1"), 2)


def test_an_explicit_endpoint_id_wins_over_the_environment() -> None:
    assert AgentSettings.from_env(REQUIRED, endpoint_id="ep-2").endpoint_id == "ep-2"
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert AgentSettings.from_env(env, endpoint_id="ep-3").endpoint_id == "ep-3"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "FXBROKER_ENDPOINT_ID is not set"),
        ({"FXBROKER_ENDPOINT_ID": "ep-1"}, "REDIS_URL is not set"),
        ({**REQUIRED, "FXBROKER_ENGINE": "gpu"}, "FXBROKER_ENGINE='gpu' is not valid"),
        ({**REQUIRED, "FXBROKER_WORKERS": "many"}, "FXBROKER_WORKERS='many' is not valid"),
        ({**REQUIRED, "FXBROKER_WORKERS": "0"}, "workers must be an integer >= 1"),
        ({**REQUIRED, "FXBROKER_HEARTBEAT_S": "-1"}, "heartbeat_s must be > 0"),
        ({**REQUIRED, "FXBROKER_ALLOWED_STRATEGIES": "00,zz"}, "unknown strategies ['zz']"),
        ({**REQUIRED, "FXBROKER_WALLTIME_S": "0"}, "walltime_s must be > 0"),
        ({**REQUIRED, "FXBROKER_LEASE_MS": "0"}, "lease_ms must be an integer >= 1"),
        ({**REQUIRED, "FXBROKER_MAX_ATTEMPTS": "x"}, "FXBROKER_MAX_ATTEMPTS='x' is not valid"),
        ({**REQUIRED, "FXBROKER_DRAIN_GRACE_S": "-1"}, "drain_grace_s must be >= 0"),
        (
            {**REQUIRED, "FXBROKER_ALLOWED_FUNCTIONS": ""},
            "FXBROKER_ALLOWED_FUNCTIONS='' is not valid",
        ),
        ({**REQUIRED, "FXBROKER_KEY_PREFIX": ""}, r"\(FXBROKER_KEY_PREFIX\) must be non-empty"),
        (
            {**REQUIRED, "FXBROKER_ENGINE": "thread", "FXBROKER_ACCELERATORS": "0"},
            "accelerators need engine='process'",
        ),
    ],
)
def test_invalid_settings_raise_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgentSettings.from_env(env)


def test_settings_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        AgentSettings("ep-1", "redis://127.0.0.1:6379/0")  # type: ignore[call-arg]
    settings = AgentSettings(endpoint_id="ep-1", redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(AttributeError):
        settings.workers = 4  # type: ignore[misc]


def test_ws_url_may_name_several_copies_and_each_must_be_a_ws_url() -> None:
    gateway = {"FXBROKER_ENDPOINT_ID": "ep-1", "FXBROKER_CREDENTIAL": "c"}
    one = AgentSettings.from_env({**gateway, "FXBROKER_WS_URL": "ws://a:1"})
    assert one.ws_urls == ("ws://a:1",)
    two = AgentSettings.from_env({**gateway, "FXBROKER_WS_URL": "ws://a:1, wss://b:2/,"})
    assert two.ws_urls == ("ws://a:1", "wss://b:2/")
    for bad in ("", ",", "ws://a:1,http://b:2", "ws://a:1,b:2"):
        with pytest.raises(SettingsError, match="ws_url must be ws:// or wss:// URLs"):
            AgentSettings.from_env({**gateway, "FXBROKER_WS_URL": bad})
