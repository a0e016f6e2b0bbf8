"""Settings from the environment, by one set of rules for every service.

Each service's settings are a frozen, keyword-only dataclass. A field that may come from the
environment names its variable and parser in its metadata::

    @dataclass(frozen=True, kw_only=True)
    class WsSettings:
        redis_url: str = field(metadata=env("REDIS_URL"))
        port: int = field(default=8001, metadata=env("FXBROKER_WS_PORT", integer))

and :func:`settings_from_env` builds the object from a mapping of variables. The rules, the
same in all three services:

* a variable that is absent leaves its field at the default; a field without a default
  needs its variable (:class:`SettingsError` "``X`` is not set");
* a variable that is present is parsed as given, even when empty: a value its parser
  refuses raises :class:`SettingsError` naming the variable and the value, and an empty
  string the field cannot use (an empty ``FXBROKER_KEY_PREFIX``) is refused by the
  dataclass's own checks. Nothing unknown or invalid silently becomes a default;
* the dataclass's ``__post_init__`` checks the values together (the checks below are the
  ones every service applies to the settings they share).

Nothing is read from the process environment here: callers pass ``os.environ`` or a dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from service_common.errors import SettingsError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")

ENV_KEY = "fxbroker.env"
"""The field-metadata key under which :func:`env` stores a field's variable."""

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
HTTP_SCHEMES = frozenset({"http", "https"})
WS_SCHEMES = frozenset({"ws", "wss"})


@dataclass(frozen=True, slots=True)
class EnvVar:
    """The environment variable a setting is read from, and how its text becomes a value."""

    name: str
    parse: Callable[[str], object]


def env(name: str, parse: Callable[[str], object] = str) -> dict[str, EnvVar]:
    """Field metadata: the setting is read from the variable ``name`` through ``parse``.

    ``parse`` raises :class:`ValueError` (its message says what was expected) for a value
    it refuses; :func:`integer`, :func:`number`, :func:`names` and :func:`one_of` are the
    parsers the services use besides ``str``.
    """
    return {ENV_KEY: EnvVar(name, parse)}


def settings_from_env(cls: type[S], environ: Mapping[str, str], /, **given: Any) -> S:
    """An instance of the settings dataclass ``cls`` from the variables in ``environ``.

    Keywords in ``given`` win over the environment (a command-line option, an id the caller
    already knows). Raises :class:`SettingsError` by the rules of this module.
    """
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        var: EnvVar | None = spec.metadata.get(ENV_KEY)
        if var is None or spec.name in given:
            continue
        raw = environ.get(var.name)
        if raw is None:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SettingsError(f"{var.name} is not set")
            continue
        try:
            values[spec.name] = var.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{var.name}={raw!r} is not valid: {exc}") from exc
    return cls(**values, **given)


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """The settings every service has: where Redis is and the prefix of its keys.

    The services' settings derive from it, so the variables, the defaults and the checks are
    the same in all three; a subclass with a ``__post_init__`` calls this one's.
    """

    redis_url: str = field(metadata=env("REDIS_URL"))
    """``redis://``, ``rediss://`` or ``unix://``; the Redis holding tasks and results."""
    key_prefix: str = field(default="fx", metadata=env("FXBROKER_KEY_PREFIX"))
    """Prefix of every Redis key (see :mod:`sdk.keys`): non-empty, no ``:``."""

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        check_key_prefix(self.key_prefix)


# -- parsers ------------------------------------------------------------------------------


def integer(raw: str) -> int:
    """A whole number in decimal (``"5000"``)."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError("a whole number is expected") from None


def number(raw: str) -> float:
    """A finite or infinite decimal number (``"2.5"``)."""
    try:
        return float(raw)
    except ValueError:
        raise ValueError("a number is expected") from None


def split_names(raw: str) -> tuple[str, ...]:
    """``"0, 1,2"`` -> ``("0", "1", "2")``: comma-separated, blanks dropped (maybe none)."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def names(raw: str) -> tuple[str, ...]:
    """:func:`split_names`, refusing an empty list.

    An empty list is refused rather than read as "none" or "any": unset the variable for
    the default.
    """
    parts = split_names(raw)
    if not parts:
        raise ValueError("a comma-separated list of at least one name is expected")
    return parts


def name_set(raw: str) -> frozenset[str]:
    """:func:`names` as a set."""
    return frozenset(names(raw))


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser that accepts exactly one of ``choices``."""

    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"one of {', '.join(choices)} is expected")
        return raw

    parse.__name__ = f"one_of_{'_'.join(choices)}"
    return parse


# -- checks every service applies alike --------------------------------------------------


def check_redis_url(url: str) -> None:
    """``url`` must be a ``redis://``, ``rediss://`` or ``unix://`` URL, or a Redis Cluster's
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``)."""
    if urlsplit(url).scheme not in REDIS_SCHEMES:
        raise SettingsError(
            "redis_url must start with redis://, rediss://, unix://, redis+cluster:// or "
            f"rediss+cluster://, not {url!r}"
        )


def check_key_prefix(prefix: str) -> None:
    """The Redis key prefix must be non-empty and hold no ``:`` (see :mod:`sdk.keys`)."""
    if not prefix or ":" in prefix:
        raise SettingsError(
            "the key prefix (FXBROKER_KEY_PREFIX) must be non-empty and contain no ':', "
            f"not {prefix!r}"
        )


def check_url(name: str, url: str, schemes: frozenset[str], *, allow_empty: bool = False) -> None:
    """``url`` must start with one of ``schemes`` followed by ``://`` and name a host."""
    if allow_empty and not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc:
        wanted = " or ".join(f"{scheme}://" for scheme in sorted(schemes))
        empty = "empty or " if allow_empty else ""
        raise SettingsError(f"{name} must be {empty}a {wanted} URL, not {url!r}")


def check_at_least(settings: object, minimum: int, *fields: str, integer: bool = False) -> None:
    """Each named field of ``settings`` must be a number (an ``int`` with ``integer``; never
    a bool) of at least ``minimum``."""
    kinds = int if integer else int | float
    for name in fields:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
            what = "an integer >= " if integer else ">= "
            raise SettingsError(f"{name} must be {what}{minimum}, not {value!r}")


def check_positive(settings: object, *fields: str) -> None:
    """Each named field of ``settings`` must be a number (never a bool) above zero."""
    for name in fields:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise SettingsError(f"{name} must be > 0, not {value!r}")
