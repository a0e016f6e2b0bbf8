"""The endpoint agent's settings: one frozen, keyword-only object, built in code or from env.

Nothing is read from the environment until :meth:`AgentSettings.from_env` is called. An
invalid value (unknown engine, a non-number where a number belongs, a count below one)
raises :class:`sdk.errors.ConfigurationError` naming the setting; nothing silently falls
back to a default.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from sdk.errors import ConfigurationError
from sdk.serialize import STRATEGIES

Engine = Literal["process", "thread"]
ENGINES: tuple[Engine, ...] = ("process", "thread")

_T = TypeVar("_T")


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """How one endpoint agent connects, reads and runs tasks.

    *Execution.* ``workers`` sync functions run at once (in processes, or threads with
    ``engine="thread"``); ``max_concurrency`` async functions run at once in the agent's
    event loop. With ``accelerators`` (ids such as ``("0", "1")``; process engine only)
    there is one worker process per accelerator, its ``CUDA_VISIBLE_DEVICES`` set to that
    id, and ``workers`` is the number of accelerators.

    *Limits.* ``walltime_s`` caps how long one task may run (``None``: no cap; a task's own
    ``walltime_s`` can only lower it). A serialized result longer than ``max_result_bytes``
    fails its task with ``ResultTooLarge``; captured stdout and stderr keep at most
    ``max_output_chars`` characters each.

    *Trust.* ``allowed_strategies`` restricts the serialization strategy ids accepted for
    function code and payloads, ``allowed_functions`` the function ids this agent runs
    (``None``: no restriction of its own; the endpoint's allow-list in Redis applies too).

    *Delivery.* A task read and not settled keeps its lease while this agent lives
    (refreshed every ``lease_ms / 3``); an entry idle for ``lease_ms`` belongs to a lost
    agent and is claimed again, up to ``max_attempts`` starts in all. On stop, running
    tasks get ``drain_grace_s`` to finish; the rest are handed back to the stream.

    ``consumer`` names this agent in the endpoint's consumer group (default
    ``<hostname>-<pid>``).
    """

    endpoint_id: str
    redis_url: str
    key_prefix: str = "fx"
    engine: Engine = "process"
    workers: int = field(default_factory=_default_workers)
    max_concurrency: int = 1000
    heartbeat_s: float = 5.0
    block_ms: int = 1000
    result_ttl_s: int = 7 * 24 * 3600
    consumer: str = ""
    allowed_strategies: frozenset[str] | None = None
    allowed_functions: frozenset[str] | None = None
    accelerators: tuple[str, ...] = ()
    walltime_s: float | None = None
    lease_ms: int = 30_000
    max_attempts: int = 3
    drain_grace_s: float = 30.0
    max_result_bytes: int = 10 * 1024 * 1024
    max_output_chars: int = 64 * 1024
    prefetch: int = 0
    """``def`` tasks held beyond the free workers, waiting in the agent for one (0: strict
    backpressure, a task is read only when a worker is free). A few hide the Redis round
    trips between one task and the next; a second agent then finds that many fewer."""

    def __post_init__(self) -> None:
        if not self.endpoint_id:
            raise ConfigurationError("endpoint_id must not be empty")
        if not self.redis_url:
            raise ConfigurationError("redis_url must not be empty")
        if not self.key_prefix:
            raise ConfigurationError("key_prefix must not be empty")
        if self.engine not in ENGINES:
            raise ConfigurationError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        for name in (
            "workers",
            "max_concurrency",
            "block_ms",
            "result_ttl_s",
            "lease_ms",
            "max_attempts",
            "max_result_bytes",
            "max_output_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, not {value!r}")
        if (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or (self.prefetch < 0)
        ):
            raise ConfigurationError(f"prefetch must be an integer >= 0, not {self.prefetch!r}")
        if not self.heartbeat_s > 0:
            raise ConfigurationError(f"heartbeat_s must be > 0, not {self.heartbeat_s!r}")
        if not self.drain_grace_s >= 0:
            raise ConfigurationError(f"drain_grace_s must be >= 0, not {self.drain_grace_s!r}")
        if self.walltime_s is not None and not (
            self.walltime_s > 0 and math.isfinite(self.walltime_s)
        ):
            raise ConfigurationError(f"walltime_s must be > 0, not {self.walltime_s!r}")
        if self.allowed_strategies is not None:
            unknown = sorted(set(self.allowed_strategies) - set(STRATEGIES))
            if unknown:
                raise ConfigurationError(
                    f"allowed_strategies names unknown strategies {unknown}; "
                    f"known: {sorted(STRATEGIES)}"
                )
        if self.accelerators:
            if self.engine != "process":
                raise ConfigurationError(
                    "accelerators need engine='process': CUDA_VISIBLE_DEVICES is per process"
                )
            if len(set(self.accelerators)) != len(self.accelerators) or not all(self.accelerators):
                raise ConfigurationError(
                    f"accelerators must be distinct, non-empty ids, not {self.accelerators!r}"
                )
            object.__setattr__(self, "workers", len(self.accelerators))
        if not self.consumer:
            object.__setattr__(self, "consumer", f"{socket.gethostname()}-{os.getpid()}")

    @property
    def capacity(self) -> int:
        """How many tasks this agent holds at most: workers, prefetched tasks, async slots."""
        return self.workers + self.prefetch + self.max_concurrency

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, endpoint_id: str | None = None
    ) -> AgentSettings:
        """Build settings from ``FXBROKER_*`` variables (and ``REDIS_URL``).

        ``REDIS_URL`` is required, and ``FXBROKER_ENDPOINT_ID`` unless ``endpoint_id`` is
        given (it wins over the variable). Optional:
        ``FXBROKER_KEY_PREFIX``, ``FXBROKER_ENGINE`` (process|thread), ``FXBROKER_WORKERS``,
        ``FXBROKER_MAX_CONCURRENCY``, ``FXBROKER_HEARTBEAT_S``, ``FXBROKER_BLOCK_MS``,
        ``FXBROKER_RESULT_TTL_S``, ``FXBROKER_CONSUMER``, ``FXBROKER_ALLOWED_STRATEGIES``
        (comma-separated strategy ids, e.g. ``00,11,st``), ``FXBROKER_ALLOWED_FUNCTIONS``
        (comma-separated function ids), ``FXBROKER_ACCELERATORS`` (comma-separated ids,
        e.g. ``0,1``), ``FXBROKER_WALLTIME_S``, ``FXBROKER_LEASE_MS``,
        ``FXBROKER_MAX_ATTEMPTS``, ``FXBROKER_DRAIN_GRACE_S``, ``FXBROKER_MAX_RESULT_BYTES``,
        ``FXBROKER_MAX_OUTPUT_CHARS``, ``FXBROKER_PREFETCH``.
        """
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise ConfigurationError(f"{name} is not set")
            return value

        def optional(name: str, parse: Callable[[str], _T], default: _T) -> _T:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r} is not valid: {exc}") from exc

        base = cls(
            endpoint_id=endpoint_id or required("FXBROKER_ENDPOINT_ID"),
            redis_url=required("REDIS_URL"),
        )
        return cls(
            endpoint_id=base.endpoint_id,
            redis_url=base.redis_url,
            key_prefix=optional("FXBROKER_KEY_PREFIX", str, base.key_prefix),
            engine=optional("FXBROKER_ENGINE", _parse_engine, base.engine),
            workers=optional("FXBROKER_WORKERS", int, base.workers),
            max_concurrency=optional("FXBROKER_MAX_CONCURRENCY", int, base.max_concurrency),
            heartbeat_s=optional("FXBROKER_HEARTBEAT_S", float, base.heartbeat_s),
            block_ms=optional("FXBROKER_BLOCK_MS", int, base.block_ms),
            result_ttl_s=optional("FXBROKER_RESULT_TTL_S", int, base.result_ttl_s),
            consumer=optional("FXBROKER_CONSUMER", str, base.consumer),
            allowed_strategies=optional(
                "FXBROKER_ALLOWED_STRATEGIES", _parse_set, base.allowed_strategies
            ),
            allowed_functions=optional(
                "FXBROKER_ALLOWED_FUNCTIONS", _parse_set, base.allowed_functions
            ),
            accelerators=optional("FXBROKER_ACCELERATORS", parse_list, base.accelerators),
            walltime_s=optional("FXBROKER_WALLTIME_S", float, base.walltime_s),
            lease_ms=optional("FXBROKER_LEASE_MS", int, base.lease_ms),
            max_attempts=optional("FXBROKER_MAX_ATTEMPTS", int, base.max_attempts),
            drain_grace_s=optional("FXBROKER_DRAIN_GRACE_S", float, base.drain_grace_s),
            max_result_bytes=optional("FXBROKER_MAX_RESULT_BYTES", int, base.max_result_bytes),
            max_output_chars=optional("FXBROKER_MAX_OUTPUT_CHARS", int, base.max_output_chars),
            prefetch=optional("FXBROKER_PREFETCH", int, base.prefetch),
        )


def _parse_engine(raw: str) -> Engine:
    for engine in ENGINES:
        if raw == engine:
            return engine
    raise ValueError(f"the engine is one of {', '.join(ENGINES)}")


def parse_list(raw: str) -> tuple[str, ...]:
    """``"0, 1,2"`` -> ``("0", "1", "2")``: comma-separated, blanks dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_set(raw: str) -> frozenset[str]:
    return frozenset(parse_list(raw))
