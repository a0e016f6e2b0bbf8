"""Settings of the web service: one frozen object, built from keywords or the environment.

Environment variables read by :meth:`WebSettings.from_env` (nothing is read at import)::

    DATABASE_URL                   required; postgresql://, postgres://, sqlite:/// or their
                                   asyncio forms (postgresql+asyncpg://, sqlite+aiosqlite:///)
    REDIS_URL                      required; redis://, rediss:// or unix://
    FXBROKER_KEY_PREFIX            Redis key prefix (default "fx")
    FXBROKER_WS_URL                public ws:// or wss:// URL of the ws service (default "")
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

A value that does not parse raises :class:`SettingsError` naming the variable; nothing
silently falls back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_WS_SCHEMES = frozenset({"ws", "wss"})


class SettingsError(ValueError):
    """A setting is missing or has a value the web service cannot use."""


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
class WebSettings:
    """Everything the web service needs; validated and normalised on construction."""

    database_url: str
    redis_url: str
    key_prefix: str = "fx"
    ws_url: str = ""
    result_ttl_s: int = 7 * 24 * 3600
    max_body_bytes: int = 10 * 1024 * 1024
    max_tasks_per_batch: int = 10_000
    auth_cache_s: float = 10.0
    function_cache_bytes: int = 64 * 1024 * 1024
    catalog_cache_s: float = 10.0
    idempotency_ttl_s: int = 24 * 3600
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 500
    globus_client_id: str = ""
    globus_client_secret: str = field(default="", repr=False)

    @property
    def globus_enabled(self) -> bool:
        """True when Globus Auth access tokens are accepted besides fxbroker's own."""
        return bool(self.globus_client_id)

    def __post_init__(self) -> None:
        object.__setattr__(self, "database_url", async_database_url(self.database_url))
        if urlsplit(self.redis_url).scheme not in _REDIS_SCHEMES:
            raise SettingsError("redis_url must start with redis://, rediss:// or unix://")
        if not self.key_prefix or ":" in self.key_prefix:
            raise SettingsError("key_prefix must be non-empty and contain no ':'")
        if self.ws_url and urlsplit(self.ws_url).scheme not in _WS_SCHEMES:
            raise SettingsError("ws_url must be empty or start with ws:// or wss://")
        for name in (
            "result_ttl_s",
            "max_body_bytes",
            "max_tasks_per_batch",
            "idempotency_ttl_s",
            "rate_limit_burst",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1")
        for name in ("auth_cache_s", "function_cache_bytes", "catalog_cache_s", "rate_limit_per_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must not be negative")
        if bool(self.globus_client_id) != bool(self.globus_client_secret):
            raise SettingsError("set both globus_client_id and globus_client_secret, or neither")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebSettings:
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "database_url": _required(env, "DATABASE_URL"),
            "redis_url": _required(env, "REDIS_URL"),
        }
        optional: dict[str, tuple[str, Callable[[str], Any]]] = {
            "key_prefix": ("FXBROKER_KEY_PREFIX", str),
            "ws_url": ("FXBROKER_WS_URL", str),
            "result_ttl_s": ("FXBROKER_RESULT_TTL_S", int),
            "max_body_bytes": ("FXBROKER_MAX_BODY_BYTES", int),
            "max_tasks_per_batch": ("FXBROKER_MAX_TASKS_PER_BATCH", int),
            "auth_cache_s": ("FXBROKER_AUTH_CACHE_S", float),
            "function_cache_bytes": ("FXBROKER_FUNCTION_CACHE_BYTES", int),
            "catalog_cache_s": ("FXBROKER_CATALOG_CACHE_S", float),
            "idempotency_ttl_s": ("FXBROKER_IDEMPOTENCY_TTL_S", int),
            "rate_limit_per_s": ("FXBROKER_RATE_LIMIT_PER_S", float),
            "rate_limit_burst": ("FXBROKER_RATE_LIMIT_BURST", int),
            "globus_client_id": ("FXBROKER_GLOBUS_CLIENT_ID", str),
            "globus_client_secret": ("FXBROKER_GLOBUS_CLIENT_SECRET", str),
        }
        for name, (var, parse) in optional.items():
            if var in env:
                values[name] = _parse(env, var, parse)
        try:
            return cls(**values)
        except SettingsError as exc:
            raise SettingsError(f"invalid web service environment: {exc}") from exc


def _required(env: Mapping[str, str], var: str) -> str:
    value = env.get(var, "")
    if not value:
        raise SettingsError(f"{var} is not set; the web service needs it")
    return value


def _parse(env: Mapping[str, str], var: str, parse: Callable[[str], T]) -> T:
    raw = env[var]
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r} is not a valid {parse.__name__}") from exc
