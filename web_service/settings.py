"""Settings of the web service: one frozen object, built from keywords or the environment.

Environment variables read by :meth:`WebSettings.from_env` (nothing is read at import)::

    DATABASE_URL                   required; postgresql://, postgres://, sqlite:/// or their
                                   asyncio forms (postgresql+asyncpg://, sqlite+aiosqlite:///)
    REDIS_URL                      required; redis://, rediss:// or unix://
    FXBROKER_KEY_PREFIX            Redis key prefix (default "fx")
    FXBROKER_WS_URL                public ws:// or wss:// URL of the ws service, or of its
                                   copies, comma-separated; announced to clients (default "")
    FXBROKER_RESULT_TTL_S          seconds results and task-group lists live (default 7 days)
    FXBROKER_MAX_BODY_BYTES        largest request body accepted (default 10 MiB)
    FXBROKER_MAX_TASKS_PER_BATCH   most tasks in one submit (default 10000)
    FXBROKER_AUTH_CACHE_S          seconds a checked token is trusted without SQL (default 10)
    FXBROKER_FUNCTION_CACHE_BYTES  bytes of function code kept in process (default 64 MiB)
    FXBROKER_CATALOG_CACHE_S       seconds a process trusts what it read of sharing, allow-lists
                                   and deletions made by other processes (default 10)
    FXBROKER_IDEMPOTENCY_TTL_S     seconds a submit's Idempotency-Key is remembered (default 24 h)
    FXBROKER_RATE_LIMIT_PER_S      requests per second one user may make, per web process
                                   (default 100; 0 switches the limit off)
    FXBROKER_RATE_LIMIT_BURST      requests one user may make at once (default 500)
    FXBROKER_GLOBUS_CLIENT_ID      with the secret below: accept Globus Auth access tokens
    FXBROKER_GLOBUS_CLIENT_SECRET  (checked by token introspection); both or neither
    FXBROKER_AMQP_URL              amqp:// or amqps:// URL of the RabbitMQ that carries results
                                   to Globus Compute Executors (default "": none, and
                                   ``GET /v2/get_amqp_result_connection_url`` says to set it)
    FXBROKER_AMQP_PUBLIC_URL       the URL of that RabbitMQ handed to Executors, where they reach
                                   it by another name than the service does (default "": the
                                   one above); only with FXBROKER_AMQP_URL
    FXBROKER_TLS_CERT              with the key below: serve https:// with this PEM certificate
    FXBROKER_TLS_KEY               (chain) and key; both or neither (:mod:`service_common.tls`)

The rules are :mod:`service_common.settings`'s: an absent variable keeps the default, a
present one is used as given, and a value that does not parse or that the service cannot
use raises :class:`~service_common.errors.SettingsError` naming it; nothing silently falls
back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from service_common import tls
from service_common.errors import SettingsError
from service_common.settings import (
    WS_SCHEMES,
    RedisSettings,
    check_at_least,
    check_url,
    env,
    integer,
    number,
    settings_from_env,
)

AMQP_SCHEMES = frozenset({"amqp", "amqps"})
_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def async_database_url(url: str) -> str:
    """``url`` with the asyncio driver fxbroker uses for its scheme.

    ``postgresql://`` and ``postgres://`` become ``postgresql+asyncpg://``; ``sqlite:///``
    becomes ``sqlite+aiosqlite:///``. Any other scheme raises :class:`SettingsError`.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DATABASE_SCHEMES:
        known = ", ".join(sorted(_DATABASE_SCHEMES))
        raise SettingsError(f"database URL must start with one of {known} followed by ://")
    return f"{_DATABASE_SCHEMES[scheme]}://{rest}"


@dataclass(frozen=True, kw_only=True)
class WebSettings(RedisSettings):
    """Everything the web service needs; validated and normalised on construction."""

    database_url: str = field(metadata=env("DATABASE_URL"))
    ws_url: str = field(default="", metadata=env("FXBROKER_WS_URL"))
    result_ttl_s: int = field(default=7 * 24 * 3600, metadata=env("FXBROKER_RESULT_TTL_S", integer))
    max_body_bytes: int = field(
        default=10 * 1024 * 1024, metadata=env("FXBROKER_MAX_BODY_BYTES", integer)
    )
    max_tasks_per_batch: int = field(
        default=10_000, metadata=env("FXBROKER_MAX_TASKS_PER_BATCH", integer)
    )
    auth_cache_s: float = field(default=10.0, metadata=env("FXBROKER_AUTH_CACHE_S", number))
    function_cache_bytes: int = field(
        default=64 * 1024 * 1024, metadata=env("FXBROKER_FUNCTION_CACHE_BYTES", integer)
    )
    catalog_cache_s: float = field(default=10.0, metadata=env("FXBROKER_CATALOG_CACHE_S", number))
    idempotency_ttl_s: int = field(
        default=24 * 3600, metadata=env("FXBROKER_IDEMPOTENCY_TTL_S", integer)
    )
    rate_limit_per_s: float = field(
        default=100.0, metadata=env("FXBROKER_RATE_LIMIT_PER_S", number)
    )
    rate_limit_burst: int = field(default=500, metadata=env("FXBROKER_RATE_LIMIT_BURST", integer))
    globus_client_id: str = field(default="", metadata=env("FXBROKER_GLOBUS_CLIENT_ID"))
    globus_client_secret: str = field(
        default="", repr=False, metadata=env("FXBROKER_GLOBUS_CLIENT_SECRET")
    )
    amqp_url: str = field(default="", repr=False, metadata=env("FXBROKER_AMQP_URL"))
    amqp_public_url: str = field(default="", repr=False, metadata=env("FXBROKER_AMQP_PUBLIC_URL"))
    tls_cert: str = field(default="", metadata=env(tls.CERT_VAR))
    tls_key: str = field(default="", metadata=env(tls.KEY_VAR))

    @property
    def amqp_client_url(self) -> str:
        """The RabbitMQ URL handed to Globus Compute Executors ("" when there is none)."""
        return self.amqp_public_url or self.amqp_url

    @property
    def globus_enabled(self) -> bool:
        """True when Globus Auth access tokens are accepted besides fxbroker's own."""
        return bool(self.globus_client_id)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "database_url", async_database_url(self.database_url))
        for url in self.ws_url.split(",") if self.ws_url else ():  # several copies: each
            check_url("ws_url", url.strip(), WS_SCHEMES)
        check_url("amqp_url", self.amqp_url, AMQP_SCHEMES, allow_empty=True)
        check_url("amqp_public_url", self.amqp_public_url, AMQP_SCHEMES, allow_empty=True)
        if self.amqp_public_url and not self.amqp_url:
            raise SettingsError("amqp_public_url needs amqp_url, the URL the service itself uses")
        check_at_least(
            self,
            1,
            "result_ttl_s",
            "max_body_bytes",
            "max_tasks_per_batch",
            "idempotency_ttl_s",
            "rate_limit_burst",
            integer=True,
        )
        check_at_least(self, 0, "function_cache_bytes", integer=True)
        check_at_least(self, 0, "auth_cache_s", "catalog_cache_s", "rate_limit_per_s")
        if bool(self.globus_client_id) != bool(self.globus_client_secret):
            raise SettingsError("set both globus_client_id and globus_client_secret, or neither")
        tls.check_pair(self.tls_cert, self.tls_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebSettings:
        """Build settings from ``environ`` (default: the process environment)."""
        return settings_from_env(cls, os.environ if environ is None else environ)
