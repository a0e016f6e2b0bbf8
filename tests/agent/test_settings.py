"""AgentSettings: defaults, validation, and from_env."""

from __future__ import annotations

import os
import socket

import pytest

from endpoint_agent import AgentSettings
from sdk.errors import ConfigurationError

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
    )


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
    ],
)
def test_invalid_settings_raise_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgentSettings.from_env(env)


def test_settings_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        AgentSettings("ep-1", "redis://127.0.0.1:6379/0")  # type: ignore[call-arg]
    settings = AgentSettings(endpoint_id="ep-1", redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(AttributeError):
        settings.workers = 4  # type: ignore[misc]
