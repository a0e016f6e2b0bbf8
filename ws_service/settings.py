"""Settings of the WebSocket result service: one frozen object, built by hand or from env."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sdk.errors import ConfigurationError

T = TypeVar("T")


def _parse(env: Mapping[str, str], name: str, convert: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a valid {convert.__name__}") from exc


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigurationError(f"{name} must be set")
    return value


@dataclass(frozen=True, kw_only=True)
class WsSettings:
    """How the result service listens, where it reads results and whom it asks about tokens."""

    redis_url: str
    """The Redis holding task hashes and task-group result streams."""
    web_url: str
    """Base URL of the web service; tokens and task-group ownership are checked there."""
    key_prefix: str = "fx"
    """Prefix of every Redis key (see :mod:`sdk.keys`)."""
    host: str = "127.0.0.1"
    port: int = 8001
    """Port to listen on; 0 picks a free one (see ``ResultServer.port``)."""
    auth_cache_s: float = 30.0
    """How long a positive answer of the web service (token, group ownership) is reused."""
    auth_timeout_s: float = 10.0
    """Timeout of one request to the web service."""
    block_ms: int = 5000
    """How long one ``XREAD`` of a subscription blocks waiting for new results."""
    batch_max: int = 1000
    """At most this many completion notices are read (and pushed) per ``XREAD``."""
    max_subscriptions: int = 1000
    """At most this many task groups one connection may subscribe to at once."""
    ping_interval_s: float = 20.0
    """Keepalive ping interval of every connection."""
    ping_timeout_s: float = 20.0
    """A connection whose pong does not arrive within this long after a ping is closed."""
    max_frame_bytes: int = 64 * 1024 * 1024
    """Largest frame sent or accepted; above the 10 MB result limit so any result fits."""

    def __post_init__(self) -> None:
        if self.block_ms < 0:
            raise ConfigurationError(f"block_ms must be >= 0, not {self.block_ms}")
        for name in ("batch_max", "max_subscriptions", "max_frame_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("ping_interval_s", "ping_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, not {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be in 0..65535, not {self.port}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WsSettings:
        """Read ``REDIS_URL``, ``FXBROKER_WEB_URL``, ``FXBROKER_KEY_PREFIX`` and the
        ``FXBROKER_WS_*`` variables (``HOST``, ``PORT``, ``AUTH_CACHE_S``, ``AUTH_TIMEOUT_S``,
        ``BLOCK_MS``, ``BATCH_MAX``, ``MAX_SUBSCRIPTIONS``, ``PING_INTERVAL_S``,
        ``PING_TIMEOUT_S``, ``MAX_FRAME_BYTES``). ``REDIS_URL`` and ``FXBROKER_WEB_URL`` are
        required; other unset variables keep their defaults; a missing required or malformed
        value raises :class:`~sdk.errors.ConfigurationError` naming the variable."""
        env = os.environ if environ is None else environ
        return cls(
            redis_url=_required(env, "REDIS_URL"),
            web_url=_required(env, "FXBROKER_WEB_URL"),
            key_prefix=env.get("FXBROKER_KEY_PREFIX") or "fx",
            host=env.get("FXBROKER_WS_HOST") or "127.0.0.1",
            port=_parse(env, "FXBROKER_WS_PORT", int, 8001),
            auth_cache_s=_parse(env, "FXBROKER_WS_AUTH_CACHE_S", float, 30.0),
            auth_timeout_s=_parse(env, "FXBROKER_WS_AUTH_TIMEOUT_S", float, 10.0),
            block_ms=_parse(env, "FXBROKER_WS_BLOCK_MS", int, 5000),
            batch_max=_parse(env, "FXBROKER_WS_BATCH_MAX", int, 1000),
            max_subscriptions=_parse(env, "FXBROKER_WS_MAX_SUBSCRIPTIONS", int, 1000),
            ping_interval_s=_parse(env, "FXBROKER_WS_PING_INTERVAL_S", float, 20.0),
            ping_timeout_s=_parse(env, "FXBROKER_WS_PING_TIMEOUT_S", float, 20.0),
            max_frame_bytes=_parse(env, "FXBROKER_WS_MAX_FRAME_BYTES", int, 64 * 1024 * 1024),
        )
