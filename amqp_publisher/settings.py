"""Settings of the AMQP result publisher: one frozen object, built by hand or from env.

:meth:`PublisherSettings.from_env` reads ``REDIS_URL`` and ``FXBROKER_AMQP_URL`` (both
required), ``FXBROKER_KEY_PREFIX`` and the ``FXBROKER_AMQP_*`` variables named beside each
field, by the rules of :mod:`service_common.settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from service_common.settings import (
    RedisSettings,
    check_at_least,
    check_url,
    env,
    integer,
    settings_from_env,
)

AMQP_SCHEMES = frozenset({"amqp", "amqps"})


@dataclass(frozen=True, kw_only=True)
class PublisherSettings(RedisSettings):
    """Where results come from and go to, and how the copies of the publisher share groups."""

    amqp_url: str = field(repr=False, metadata=env("FXBROKER_AMQP_URL"))
    """``amqp://`` or ``amqps://`` URL of the RabbitMQ the web service hands to that SDK."""
    lease_ms: int = field(default=10_000, metadata=env("FXBROKER_AMQP_LEASE_MS", integer))
    """How long a copy's claim on a group lasts unrenewed (renewed every third of it): after
    a crash, the group waits this long before another copy (or the restarted one) takes it."""
    batch_max: int = field(default=500, metadata=env("FXBROKER_AMQP_BATCH_MAX", integer))
    """At most this many results of one group are published (then confirmed) per round."""
    idle_ms: int = field(default=50, metadata=env("FXBROKER_AMQP_IDLE_MS", integer))
    """How long the loop waits after a round that found nothing new in any group."""
    refresh_ms: int = field(default=1_000, metadata=env("FXBROKER_AMQP_REFRESH_MS", integer))
    """How often the list of groups is read again (to find new ones and free leases)."""
    group_ttl_s: int = field(default=7 * 24 * 3600, metadata=env("FXBROKER_RESULT_TTL_S", integer))
    """A group nobody submitted into for this long is forgotten, as its results are."""
    client_name: str = field(
        default="fxbroker-amqp-publisher", metadata=env("FXBROKER_AMQP_CLIENT_NAME")
    )
    """The name of this copy's Redis connections (``CLIENT LIST``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_url("amqp_url", self.amqp_url, AMQP_SCHEMES)
        check_at_least(
            self, 1, "lease_ms", "batch_max", "idle_ms", "refresh_ms", "group_ttl_s", integer=True
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PublisherSettings:
        return settings_from_env(cls, os.environ if environ is None else environ)
