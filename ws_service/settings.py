"""Settings of the WebSocket result service: one frozen object, built by hand or from env.

:meth:`WsSettings.from_env` reads ``REDIS_URL`` and ``FXBROKER_WEB_URL`` (both required),
``FXBROKER_KEY_PREFIX``, ``FXBROKER_TLS_CERT`` / ``FXBROKER_TLS_KEY`` and the other
``FXBROKER_*`` variables named beside each field, by the
rules of :mod:`service_common.settings`: an absent variable keeps the default, a present
one is used as given, and a value that does not parse or that the service cannot use raises
:class:`~service_common.errors.SettingsError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from service_common import tls
from service_common.errors import SettingsError
from service_common.settings import (
    HTTP_SCHEMES,
    RedisSettings,
    check_at_least,
    check_positive,
    check_url,
    env,
    integer,
    number,
    one_of,
    settings_from_env,
)

COMPRESSION_CHOICES = ("none", "deflate")
"""``none``: frames leave as they are; ``deflate``: permessage-deflate for clients that offer it."""


@dataclass(frozen=True, kw_only=True)
class WsSettings(RedisSettings):
    """How the result service listens, where it reads results and whom it asks about tokens."""

    web_url: str = field(metadata=env("FXBROKER_WEB_URL"))
    """Base URL of the web service; tokens and task-group ownership are checked there."""
    host: str = field(default="127.0.0.1", metadata=env("FXBROKER_WS_HOST"))
    port: int = field(default=8001, metadata=env("FXBROKER_WS_PORT", integer))
    """Port to listen on; 0 picks a free one (see ``ResultServer.port``)."""
    tls_cert: str = field(default="", metadata=env(tls.CERT_VAR))
    """PEM certificate (chain) to serve ``wss://`` with, with ``tls_key``; both or neither
    (neither: ``ws://``). Loaded at start (:mod:`service_common.tls`)."""
    tls_key: str = field(default="", metadata=env(tls.KEY_VAR))
    """The PEM private key of ``tls_cert``."""
    auth_cache_s: float = field(default=30.0, metadata=env("FXBROKER_WS_AUTH_CACHE_S", number))
    """How long a positive answer of the web service (token, group ownership) is reused."""
    auth_timeout_s: float = field(default=10.0, metadata=env("FXBROKER_WS_AUTH_TIMEOUT_S", number))
    """Timeout of one request to the web service."""
    block_ms: int = field(default=5000, metadata=env("FXBROKER_WS_BLOCK_MS", integer))
    """How long one ``XREAD`` of a subscription blocks waiting for new results."""
    batch_max: int = field(default=1000, metadata=env("FXBROKER_WS_BATCH_MAX", integer))
    """At most this many completion notices are read (and pushed) per ``XREAD``."""
    max_subscriptions: int = field(
        default=1000, metadata=env("FXBROKER_WS_MAX_SUBSCRIPTIONS", integer)
    )
    """At most this many task groups one connection may subscribe to at once."""
    ping_interval_s: float = field(
        default=20.0, metadata=env("FXBROKER_WS_PING_INTERVAL_S", number)
    )
    """Keepalive ping interval of every connection."""
    ping_timeout_s: float = field(default=20.0, metadata=env("FXBROKER_WS_PING_TIMEOUT_S", number))
    """A connection whose pong does not arrive within this long after a ping is closed."""
    max_frame_bytes: int = field(
        default=64 * 1024 * 1024, metadata=env("FXBROKER_WS_MAX_FRAME_BYTES", integer)
    )
    """Largest frame sent or accepted; above the 10 MB result limit so any result fits."""
    compression: str = field(
        default="none", metadata=env("FXBROKER_WS_COMPRESSION", one_of(*COMPRESSION_CHOICES))
    )
    """``none`` (the default) or ``deflate``. Results are mostly serialized base64 that
    deflate shrinks little, while compressing every frame costs CPU on both ends of every
    push; turn it on only for slow links carrying compressible results."""

    client_name: str = field(default="fxbroker-ws", metadata=env("FXBROKER_WS_CLIENT_NAME"))
    """The name of this copy's Redis connections (``CLIENT LIST``)."""
    gateway_redis_connections: int = field(
        default=8, metadata=env("FXBROKER_WS_GATEWAY_REDIS_CONNECTIONS", integer)
    )
    """The gateway's Redis connections, whatever the number of agents: one blocked read,
    one cancel subscription, the rest a pool that starts, settles, renews and records."""
    lease_ms: int = field(default=30_000, metadata=env("FXBROKER_LEASE_MS", integer))
    """A task handed to an agent is its own while its connection lives (renewed every
    ``lease_ms / 3``); one idle this long is claimed again for another agent."""
    max_attempts: int = field(default=3, metadata=env("FXBROKER_MAX_ATTEMPTS", integer))
    """Starts a task gets in all; the next fails it with ``WorkerLost``."""
    heartbeat_s: float = field(default=5.0, metadata=env("FXBROKER_HEARTBEAT_S", number))
    """How often agents report status; the status hash lives three of these."""
    result_ttl_s: int = field(default=7 * 24 * 3600, metadata=env("FXBROKER_RESULT_TTL_S", integer))
    """How long a settled task's record and its group's notices are kept."""
    drain_timeout_s: float = field(
        default=30.0, metadata=env("FXBROKER_WS_DRAIN_TIMEOUT_S", number)
    )
    """On shutdown, how long agents get to hand back their tasks and close."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 3, "gateway_redis_connections", integer=True)
        check_at_least(self, 1, "lease_ms", "max_attempts", "result_ttl_s", integer=True)
        check_positive(self, "heartbeat_s")
        check_at_least(self, 0, "drain_timeout_s")
        if not self.client_name or any(c.isspace() for c in self.client_name):
            raise SettingsError("client_name must be a non-empty name without spaces")
        check_url("web_url", self.web_url, HTTP_SCHEMES)
        tls.check_pair(self.tls_cert, self.tls_key)
        if not self.host:
            raise SettingsError("host must not be empty")
        if self.compression not in COMPRESSION_CHOICES:
            raise SettingsError(
                f"compression must be one of {', '.join(COMPRESSION_CHOICES)}, "
                f"not {self.compression!r}"
            )
        check_at_least(self, 0, "block_ms", integer=True)
        check_at_least(self, 1, "batch_max", "max_subscriptions", "max_frame_bytes", integer=True)
        check_at_least(self, 0, "auth_cache_s")
        check_positive(self, "auth_timeout_s", "ping_interval_s", "ping_timeout_s")
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, not {self.port}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WsSettings:
        """Build settings from ``environ`` (default: the process environment)."""
        return settings_from_env(cls, os.environ if environ is None else environ)
