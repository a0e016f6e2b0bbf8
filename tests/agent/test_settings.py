"""AgentSettings: defaults, validation, and from_env."""

from __future__ import annotations

import os
import socket

import pytest

from endpoint_agent import AgentSettings
from service_common.errors import SettingsError

REQUIRED = {
    "FXBROKER_ENDPOINT_ID": "ep-1",
    "FXBROKER_WS_URL": "ws://127.0.0.1:8001",
    "FXBROKER_CREDENTIAL": "fxep_secret",
}
GATEWAY = {"ws_url": "ws://127.0.0.1:8001", "credential": "fxep_secret"}


def test_defaults_are_computed_at_construction() -> None:
    settings = AgentSettings(endpoint_id="ep-1", **GATEWAY)
    assert settings.workers == (os.cpu_count() or 1)
    assert settings.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert (settings.engine, settings.max_concurrency, settings.prefetch) == ("process", 1000, 0)
    assert settings.capacity == settings.workers + 1000
    assert (settings.walltime_s, settings.drain_grace_s) == (None, 30.0)
    assert (settings.max_result_bytes, settings.max_output_chars) == (10 * 1024 * 1024, 65536)
    assert (settings.accelerators, settings.allowed_functions) == ((), None)
    assert "fxep_secret" not in repr(settings)  # the credential is never logged


def test_from_env_reads_every_setting() -> None:
    settings = AgentSettings.from_env(
        {
            **REQUIRED,
            "FXBROKER_ENGINE": "thread",
            "FXBROKER_WORKERS": "3",
            "FXBROKER_MAX_CONCURRENCY": "50",
            "FXBROKER_BLOCK_MS": "250",
            "FXBROKER_CONSUMER": "gpu-node-7",
            "FXBROKER_ALLOWED_STRATEGIES": "00, 11,st",
            "FXBROKER_ALLOWED_FUNCTIONS": "fn-1,fn-2",
            "FXBROKER_WALLTIME_S": "90",
            "FXBROKER_DRAIN_GRACE_S": "2.5",
            "FXBROKER_MAX_RESULT_BYTES": "1000",
            "FXBROKER_MAX_OUTPUT_CHARS": "10",
            "FXBROKER_MAX_HELD_OUTCOMES": "7",
            "FXBROKER_MAX_HELD_BYTES": "4096",
            "FXBROKER_PREFETCH": "2",
            # The platform's own settings are not the agent's: ignored, never a Redis URL.
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "FXBROKER_LEASE_MS": "5000",
        }
    )
    assert settings == AgentSettings(
        endpoint_id="ep-1",
        **GATEWAY,
        engine="thread",
        workers=3,
        max_concurrency=50,
        block_ms=250,
        consumer="gpu-node-7",
        allowed_strategies=frozenset({"00", "11", "st"}),
        allowed_functions=frozenset({"fn-1", "fn-2"}),
        walltime_s=90.0,
        drain_grace_s=2.5,
        max_result_bytes=1000,
        max_output_chars=10,
        max_held_outcomes=7,
        max_held_bytes=4096,
        prefetch=2,
    )
    assert not hasattr(settings, "redis_url")


def test_accelerators_from_env_pin_one_process_each() -> None:
    settings = AgentSettings.from_env({**REQUIRED, "FXBROKER_ACCELERATORS": "0, 1"})
    assert (settings.accelerators, settings.workers) == (("0", "1"), 2)


def test_an_explicit_endpoint_id_wins_over_the_environment() -> None:
    assert AgentSettings.from_env(REQUIRED, endpoint_id="ep-2").endpoint_id == "ep-2"
    env = {k: v for k, v in REQUIRED.items() if k != "FXBROKER_ENDPOINT_ID"}
    assert AgentSettings.from_env(env, endpoint_id="ep-3").endpoint_id == "ep-3"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {k: v for k, v in REQUIRED.items() if k != "FXBROKER_ENDPOINT_ID"},
            "FXBROKER_ENDPOINT_ID is not set",
        ),
        (
            {"FXBROKER_ENDPOINT_ID": "ep-1", "FXBROKER_WS_URL": "ws://a:1"},
            r"credential \(FXBROKER_CREDENTIAL\) is needed",
        ),
        (
            {"FXBROKER_ENDPOINT_ID": "ep-1", "REDIS_URL": "redis://127.0.0.1:6379/0"},
            r"credential \(FXBROKER_CREDENTIAL\) is needed",
        ),
        ({**REQUIRED, "FXBROKER_ENGINE": "gpu"}, "FXBROKER_ENGINE='gpu' is not valid"),
        ({**REQUIRED, "FXBROKER_WORKERS": "many"}, "FXBROKER_WORKERS='many' is not valid"),
        ({**REQUIRED, "FXBROKER_WORKERS": "0"}, "workers must be an integer >= 1"),
        ({**REQUIRED, "FXBROKER_ALLOWED_STRATEGIES": "00,zz"}, "unknown strategies ['zz']"),
        ({**REQUIRED, "FXBROKER_WALLTIME_S": "0"}, "walltime_s must be > 0"),
        ({**REQUIRED, "FXBROKER_BLOCK_MS": "0"}, "block_ms must be an integer >= 1"),
        ({**REQUIRED, "FXBROKER_MAX_HELD_OUTCOMES": "x"}, "FXBROKER_MAX_HELD_OUTCOMES='x'"),
        ({**REQUIRED, "FXBROKER_DRAIN_GRACE_S": "-1"}, "drain_grace_s must be >= 0"),
        (
            {**REQUIRED, "FXBROKER_ALLOWED_FUNCTIONS": ""},
            "FXBROKER_ALLOWED_FUNCTIONS='' is not valid",
        ),
        (
            {**REQUIRED, "FXBROKER_ENGINE": "thread", "FXBROKER_ACCELERATORS": "0"},
            "accelerators need engine='process'",
        ),
        ({**REQUIRED, "FXBROKER_ENGINE": "rq"}, "engine 'rq' needs rq_redis_url"),
        (
            {**REQUIRED, "FXBROKER_ENGINE": "rq", "FXBROKER_RQ_REDIS_URL": "127.0.0.1:6379"},
            "engine 'rq' needs rq_redis_url",
        ),
        (
            {
                **REQUIRED,
                "FXBROKER_ENGINE": "rq",
                "FXBROKER_RQ_REDIS_URL": "redis://s:6379/0",
                "FXBROKER_RQ_QUEUE": " ",
            },
            "rq_queue .FXBROKER_RQ_QUEUE. must not be empty",
        ),
        ({**REQUIRED, "FXBROKER_ENGINE": "parsl"}, "engine 'parsl' needs parsl_config"),
        (
            {
                **REQUIRED,
                "FXBROKER_ENGINE": "parsl",
                "FXBROKER_PARSL_CONFIG": "slurm.py",
                "FXBROKER_PARSL_RUN_DIR": "",
            },
            "parsl_run_dir .FXBROKER_PARSL_RUN_DIR. must not be empty",
        ),
    ],
)
def test_invalid_settings_raise_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AgentSettings.from_env(env)


def test_the_rq_engine_names_the_sites_redis_and_queue() -> None:
    env = {**REQUIRED, "FXBROKER_ENGINE": "rq", "FXBROKER_RQ_REDIS_URL": "redis://site:6379/2"}
    settings = AgentSettings.from_env(env)
    assert (settings.engine, settings.rq_redis_url, settings.rq_queue) == (
        "rq",
        "redis://site:6379/2",
        "fxbroker",
    )
    settings = AgentSettings.from_env({**env, "FXBROKER_RQ_QUEUE": "gpu"})
    assert settings.rq_queue == "gpu"
    assert "site:6379" not in repr(settings)  # the URL may hold the site's password


def test_the_parsl_engine_names_its_config_file_and_run_directory() -> None:
    env = {**REQUIRED, "FXBROKER_ENGINE": "parsl", "FXBROKER_PARSL_CONFIG": "site/slurm.py"}
    settings = AgentSettings.from_env(env)
    assert (settings.engine, settings.parsl_config, settings.parsl_run_dir) == (
        "parsl",
        "site/slurm.py",
        "runinfo",
    )
    settings = AgentSettings.from_env({**env, "FXBROKER_PARSL_RUN_DIR": "parsl-runs"})
    assert settings.parsl_run_dir == "parsl-runs"


def test_settings_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        AgentSettings("ep-1", "ws://127.0.0.1:8001")  # type: ignore[misc]
    settings = AgentSettings(endpoint_id="ep-1", **GATEWAY)
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
