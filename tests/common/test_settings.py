"""settings_from_env: one set of rules, and the three services' settings all following them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from endpoint_agent.settings import AgentSettings
from service_common.errors import SettingsError
from service_common.settings import (
    env,
    integer,
    name_set,
    names,
    number,
    one_of,
    settings_from_env,
    split_names,
)
from web_service.settings import WebSettings
from ws_service.settings import WsSettings


@dataclass(frozen=True, kw_only=True)
class Example:
    url: str = field(metadata=env("EX_URL"))
    count: int = field(default=2, metadata=env("EX_COUNT", integer))
    ratio: float = field(default=0.5, metadata=env("EX_RATIO", number))
    mode: str = field(default="a", metadata=env("EX_MODE", one_of("a", "b")))
    tags: frozenset[str] | None = field(default=None, metadata=env("EX_TAGS", name_set))
    label: str = field(default="x", metadata=env("EX_LABEL"))
    internal: int = 7  # no variable: never read from the environment

    def __post_init__(self) -> None:
        if not self.label:
            raise SettingsError("label must not be empty")


def test_absent_variables_keep_their_defaults() -> None:
    assert settings_from_env(Example, {"EX_URL": "u", "internal": "9"}) == Example(url="u")


def test_present_variables_are_parsed() -> None:
    environ = {
        "EX_URL": "u",
        "EX_COUNT": "5",
        "EX_RATIO": "2.5",
        "EX_MODE": "b",
        "EX_TAGS": "p, q,p",
        "EX_LABEL": "y",
    }
    assert settings_from_env(Example, environ) == Example(
        url="u", count=5, ratio=2.5, mode="b", tags=frozenset({"p", "q"}), label="y"
    )


def test_given_keywords_win_over_the_environment() -> None:
    assert settings_from_env(Example, {"EX_COUNT": "5"}, url="g", count=3) == Example(
        url="g", count=3
    )


def test_a_required_variable_must_be_set() -> None:
    with pytest.raises(SettingsError, match=r"^EX_URL is not set$"):
        settings_from_env(Example, {})


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("EX_COUNT", "many", "a whole number is expected"),
        ("EX_COUNT", "1.5", "a whole number is expected"),
        ("EX_COUNT", "", "a whole number is expected"),
        ("EX_RATIO", "soon", "a number is expected"),
        ("EX_MODE", "c", "one of a, b is expected"),
        ("EX_TAGS", " , ", "at least one name"),
    ],
)
def test_a_value_its_parser_refuses_names_the_variable(name: str, raw: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}={raw!r} is not valid: .*{reason}"):
        settings_from_env(Example, {"EX_URL": "u", name: raw})


def test_an_empty_value_is_used_as_given_never_replaced_by_the_default() -> None:
    with pytest.raises(SettingsError, match="label must not be empty"):
        settings_from_env(Example, {"EX_URL": "u", "EX_LABEL": ""})


def test_list_parsers() -> None:
    assert split_names(" 0, 1,,2 ") == ("0", "1", "2")
    assert split_names("") == ()
    assert names("a,b") == ("a", "b")
    with pytest.raises(ValueError, match="at least one"):
        names(",")


# -- the services that reach Redis follow the same rules (the agent never does) -----------

REDIS = "redis://127.0.0.1:6379/0"
SERVICES: dict[str, tuple[Callable[[Mapping[str, str]], Any], dict[str, str]]] = {
    "web": (WebSettings.from_env, {"DATABASE_URL": "sqlite:///fx.db", "REDIS_URL": REDIS}),
    "ws": (WsSettings.from_env, {"REDIS_URL": REDIS, "FXBROKER_WEB_URL": "http://127.0.0.1:1"}),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_an_empty_key_prefix_is_an_error_in_every_service(service: str) -> None:
    from_env, base = SERVICES[service]
    with pytest.raises(SettingsError, match=r"\(FXBROKER_KEY_PREFIX\) must be non-empty"):
        from_env({**base, "FXBROKER_KEY_PREFIX": ""})


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize("prefix", ["a:b", ":"])
def test_a_key_prefix_with_a_colon_is_an_error_in_every_service(service: str, prefix: str) -> None:
    from_env, base = SERVICES[service]
    with pytest.raises(SettingsError, match="contain no ':'"):
        from_env({**base, "FXBROKER_KEY_PREFIX": prefix})


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_key_prefix_defaults_to_fx_and_is_read_in_every_service(service: str) -> None:
    from_env, base = SERVICES[service]
    assert from_env(base).key_prefix == "fx"
    assert from_env({**base, "FXBROKER_KEY_PREFIX": "prod"}).key_prefix == "prod"


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize("url", ["", "http://127.0.0.1:6379", "127.0.0.1:6379"])
def test_a_bad_redis_url_is_an_error_in_every_service(service: str, url: str) -> None:
    from_env, base = SERVICES[service]
    with pytest.raises(SettingsError, match="redis_url must start with"):
        from_env({**base, "REDIS_URL": url})


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_missing_redis_url_is_named_in_every_service(service: str) -> None:
    from_env, base = SERVICES[service]
    environ = {k: v for k, v in base.items() if k != "REDIS_URL"}
    with pytest.raises(SettingsError, match=r"^REDIS_URL is not set$"):
        from_env(environ)


@pytest.mark.parametrize(
    ("service", "name"),
    [
        ("web", "FXBROKER_RESULT_TTL_S"),
        ("ws", "FXBROKER_WS_PORT"),
    ],
)
def test_an_empty_number_is_an_error_not_the_default(service: str, name: str) -> None:
    from_env, base = SERVICES[service]
    with pytest.raises(SettingsError, match=f"^{name}='' is not valid"):
        from_env({**base, name: ""})


def test_an_empty_number_is_an_error_for_the_agent_too() -> None:
    base = {
        "FXBROKER_ENDPOINT_ID": "ep-1",
        "FXBROKER_WS_URL": "ws://a:1",
        "FXBROKER_CREDENTIAL": "c",
    }
    with pytest.raises(SettingsError, match=r"^FXBROKER_WORKERS='' is not valid"):
        AgentSettings.from_env({**base, "FXBROKER_WORKERS": ""})
