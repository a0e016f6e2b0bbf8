"""Config discovery: arguments, then environment, then ``$FXBROKER_HOME/config.json``."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fxbroker import ConfigurationError
from sdk.config import ClientConfig, config_path, fxbroker_home, read_config, write_config

ENV = (
    "FXBROKER_URL", "FXBROKER_TOKEN", "FXBROKER_WS_URL", "FXBROKER_ENDPOINT_ID",
    "FXBROKER_WS_COMPRESSION", "FXBROKER_WS_LINGER_S",
)  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "fxhome"
    monkeypatch.setenv("FXBROKER_HOME", str(home))
    return home


def test_nothing_configured_says_how_to_fix_it(home: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"fxbroker dev.*FXBROKER_URL and FXBROKER_TOKEN"):
        ClientConfig.from_env()


def test_url_without_token_is_an_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="no token"):
        ClientConfig.from_env()


def test_file_written_by_fxbroker_dev_is_found(home: Path) -> None:
    path = write_config(
        home, url="http://127.0.0.1:8000", ws_url="ws://127.0.0.1:8001", token="t1",
        endpoint_id="ep1",
    )  # fmt: skip
    assert path == home / "config.json" == config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = ClientConfig.from_env()
    assert config == ClientConfig(
        url="http://127.0.0.1:8000", token="t1", ws_url="ws://127.0.0.1:8001", endpoint_id="ep1"
    )
    assert config.require_endpoint() == "ep1"
    assert config.require_endpoint("other") == "other"


def test_environment_beats_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, url="http://127.0.0.1:8000", ws_url="ws://f", token="ft", endpoint_id="fe")
    monkeypatch.setenv("FXBROKER_TOKEN", "et")
    monkeypatch.setenv("FXBROKER_WS_URL", "ws://e")
    monkeypatch.setenv("FXBROKER_ENDPOINT_ID", "ee")
    config = ClientConfig.from_env()
    assert (config.url, config.token, config.ws_url, config.endpoint_id) == (
        "http://127.0.0.1:8000", "et", "ws://e", "ee",
    )  # fmt: skip


def test_arguments_beat_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("FXBROKER_TOKEN", "et")
    config = ClientConfig.from_env(url="http://127.0.0.1:2/v1/", token="at", endpoint_id="ae")
    assert (config.url, config.token, config.endpoint_id) == ("http://127.0.0.1:2", "at", "ae")


def test_the_file_token_never_goes_to_another_service(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home, url="http://127.0.0.1:8000", ws_url="ws://f", token="ft", endpoint_id="fe")
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:9999")
    with pytest.raises(ConfigurationError, match="no token"):
        ClientConfig.from_env()
    config = ClientConfig.from_env(token="mine")
    assert (config.ws_url, config.endpoint_id) == (None, None)


def test_the_file_fills_in_for_its_own_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, url="http://127.0.0.1:8000", ws_url="ws://f", token="ft", endpoint_id="fe")
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:8000/")
    assert ClientConfig.from_env().token == "ft"


def test_missing_endpoint_says_how_to_fix_it(home: Path) -> None:
    config = ClientConfig.from_env(url="http://127.0.0.1:1", token="t")
    with pytest.raises(ConfigurationError, match="FXBROKER_ENDPOINT_ID"):
        config.require_endpoint()


def test_environment_is_read_at_call_time(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("FXBROKER_TOKEN", "a")
    assert ClientConfig.from_env().token == "a"
    monkeypatch.setenv("FXBROKER_TOKEN", "b")
    assert ClientConfig.from_env().token == "b"


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FXBROKER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fxbroker_home() == tmp_path / ".fxbroker"


@pytest.mark.parametrize(
    ("text", "match"),
    [("{not json", "not valid JSON"), ("[1]", "JSON object"), ('{"url": 5}', "'url' must be")],
)
def test_a_broken_file_is_a_clear_error(home: Path, text: str, match: str) -> None:
    home.mkdir()
    (home / "config.json").write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        read_config()


def test_rewriting_replaces_the_file(home: Path) -> None:
    write_config(home, url="http://a", ws_url="ws://a", token="1", endpoint_id="e")
    write_config(home, url="http://b", ws_url="ws://b", token="2", endpoint_id="e")
    assert json.loads((home / "config.json").read_text())["token"] == "2"
    assert [p.name for p in home.iterdir()] == ["config.json"]


def test_websocket_settings_default_to_no_compression_and_a_short_linger(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("FXBROKER_TOKEN", "et")
    config = ClientConfig.from_env()
    assert (config.ws_compression, config.ws_linger_s) == ("none", 5.0)
    monkeypatch.setenv("FXBROKER_WS_COMPRESSION", "deflate")
    monkeypatch.setenv("FXBROKER_WS_LINGER_S", "0.25")
    config = ClientConfig.from_env()
    assert (config.ws_compression, config.ws_linger_s) == ("deflate", 0.25)
    assert ClientConfig.from_env(ws_linger_s=0).ws_linger_s == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FXBROKER_WS_COMPRESSION", "gzip"),
        ("FXBROKER_WS_LINGER_S", "soon"),
        ("FXBROKER_WS_LINGER_S", "-1"),
        ("FXBROKER_WS_LINGER_S", "nan"),
    ],
)
def test_bad_websocket_settings_name_their_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("FXBROKER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("FXBROKER_TOKEN", "et")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        ClientConfig.from_env()
