"""The endpoint agent's settings: one frozen, keyword-only object, built in code or from env.

Nothing is read from the environment until :meth:`AgentSettings.from_env` is called; it
reads the variable named beside each field by the rules of :mod:`service_common.settings`.
An invalid value (unknown engine, a non-number where a number belongs, a count below one,
an empty list) raises :class:`~service_common.errors.SettingsError` naming the setting;
nothing silently falls back to a default.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from sdk.serialize import STRATEGIES
from service_common.errors import SettingsError
from service_common.settings import (
    WS_SCHEMES,
    check_at_least,
    env,
    integer,
    name_set,
    number,
    one_of,
    settings_from_env,
    split_names,
)

Engine = Literal["process", "thread", "rq", "parsl"]
ENGINES: tuple[Engine, ...] = ("process", "thread", "rq", "parsl")
RQ_SCHEMES = ("redis", "rediss", "unix")


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

    *Delivery.* The gateway holds the lease of every task it handed this agent while the
    agent's connection lives (its ``lease_ms``, ``max_attempts`` and heartbeat interval are
    the ws_service copy's settings). On stop, running tasks get ``drain_grace_s`` to finish;
    the rest are handed back.

    *Transport.* The agent reaches its endpoint only through the gateway at ``ws_url``
    (``ws[s]://host:port``, the WebSocket service), authenticated by the endpoint's own
    ``credential`` (see ``fxbroker endpoint start``); it never sees Redis
    (:mod:`endpoint_agent.gateway`). It holds at most ``max_held_outcomes`` outcomes
    (``max_held_bytes`` bytes) the gateway has not answered, for instance while it is away,
    by taking no more work when full, never by dropping one.

    *rq* (``engine="rq"``, :mod:`endpoint_agent.rq_engine`): ``def`` tasks become rq jobs
    on queue ``rq_queue`` of the site's own Redis at ``rq_redis_url`` (not the platform's),
    for the site's ``rq worker`` processes; ``workers`` is how many jobs are in rq at once.

    *Parsl* (``engine="parsl"``, :mod:`endpoint_agent.parsl_engine`): ``def`` tasks run on a
    Parsl ``HighThroughputExecutor`` whose provider (and executor options) the Python file
    ``parsl_config`` defines; Parsl keeps its logs and scripts in ``parsl_run_dir``;
    ``workers`` is how many tasks are in Parsl at once.

    ``consumer`` names this agent in the endpoint's consumer group, and to the gateway
    (default ``<hostname>-<pid>``).
    """

    ws_url: str = field(default="", metadata=env("FXBROKER_WS_URL"))
    """The WebSocket service whose gateway serves the agent: one URL, or several copies'
    separated by commas (for copies with no load balancer in front). With several, the
    agent connects to the first and, after a failed connect or a dropped connection, tries
    the next, round robin (:attr:`ws_urls`)."""
    credential: str = field(default="", repr=False, metadata=env("FXBROKER_CREDENTIAL"))
    ca_file: str = field(default="", metadata=env("FXBROKER_CA_FILE"))
    """PEM file of the authorities a ``wss://`` gateway's certificate is checked against
    (empty: ``SSL_CERT_FILE``, else the default ones; :mod:`sdk.tls`)."""
    max_held_outcomes: int = field(
        default=10_000, metadata=env("FXBROKER_MAX_HELD_OUTCOMES", integer)
    )
    max_held_bytes: int = field(
        default=256 * 1024 * 1024, metadata=env("FXBROKER_MAX_HELD_BYTES", integer)
    )

    endpoint_id: str = field(metadata=env("FXBROKER_ENDPOINT_ID"))
    engine: Engine = field(default="process", metadata=env("FXBROKER_ENGINE", one_of(*ENGINES)))
    workers: int = field(
        default_factory=_default_workers, metadata=env("FXBROKER_WORKERS", integer)
    )
    max_concurrency: int = field(default=1000, metadata=env("FXBROKER_MAX_CONCURRENCY", integer))
    block_ms: int = field(default=1000, metadata=env("FXBROKER_BLOCK_MS", integer))
    consumer: str = field(default="", metadata=env("FXBROKER_CONSUMER"))
    allowed_strategies: frozenset[str] | None = field(
        default=None, metadata=env("FXBROKER_ALLOWED_STRATEGIES", name_set)
    )
    allowed_functions: frozenset[str] | None = field(
        default=None, metadata=env("FXBROKER_ALLOWED_FUNCTIONS", name_set)
    )
    accelerators: tuple[str, ...] = field(
        default=(), metadata=env("FXBROKER_ACCELERATORS", split_names)
    )
    walltime_s: float | None = field(default=None, metadata=env("FXBROKER_WALLTIME_S", number))
    drain_grace_s: float = field(default=30.0, metadata=env("FXBROKER_DRAIN_GRACE_S", number))
    max_result_bytes: int = field(
        default=10 * 1024 * 1024, metadata=env("FXBROKER_MAX_RESULT_BYTES", integer)
    )
    max_output_chars: int = field(
        default=64 * 1024, metadata=env("FXBROKER_MAX_OUTPUT_CHARS", integer)
    )
    rq_redis_url: str = field(default="", repr=False, metadata=env("FXBROKER_RQ_REDIS_URL"))
    """The site's Redis whose rq workers run this agent's ``def`` tasks (``engine="rq"``):
    ``redis[s]://[user:password@]host:port/db`` or ``unix:///path``."""
    rq_queue: str = field(default="fxbroker", metadata=env("FXBROKER_RQ_QUEUE"))
    """The rq queue the site's workers listen on (``rq worker --url URL QUEUE``)."""
    parsl_config: str = field(default="", metadata=env("FXBROKER_PARSL_CONFIG"))
    """The Python file that defines the Parsl ``provider`` (and ``executor`` options) of
    ``engine="parsl"`` (:mod:`endpoint_agent.parsl_engine`)."""
    parsl_run_dir: str = field(default="runinfo", metadata=env("FXBROKER_PARSL_RUN_DIR"))
    """Parsl's run directory (its logs, the provider's submit scripts), as Parsl's own
    ``run_dir``: relative paths are from the agent's working directory."""
    prefetch: int = field(default=0, metadata=env("FXBROKER_PREFETCH", integer))
    """``def`` tasks held beyond the free workers, waiting in the agent for one (0: strict
    backpressure, a task is read only when a worker is free). A few hide the Redis round
    trips between one task and the next; a second agent then finds that many fewer."""

    def __post_init__(self) -> None:
        if not self.credential:
            raise SettingsError(
                "the endpoint's credential (FXBROKER_CREDENTIAL) is needed to reach the gateway"
            )
        for url in self.ws_urls or ("",):
            if urlsplit(url).scheme not in WS_SCHEMES or not urlsplit(url).netloc:
                raise SettingsError(
                    f"ws_url must be ws:// or wss:// URLs (comma-separated) of the "
                    f"WebSocket service to reach the gateway, not {self.ws_url!r}"
                )
        if not self.endpoint_id:
            raise SettingsError("endpoint_id must not be empty")
        if self.engine not in ENGINES:
            raise SettingsError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        check_at_least(
            self,
            1,
            "workers",
            "max_concurrency",
            "block_ms",
            "max_result_bytes",
            "max_output_chars",
            "max_held_outcomes",
            "max_held_bytes",
            integer=True,
        )
        check_at_least(self, 0, "prefetch", integer=True)
        check_at_least(self, 0, "drain_grace_s")
        if self.walltime_s is not None and not (
            self.walltime_s > 0 and math.isfinite(self.walltime_s)
        ):
            raise SettingsError(f"walltime_s must be > 0, not {self.walltime_s!r}")
        if self.allowed_strategies is not None:
            unknown = sorted(set(self.allowed_strategies) - set(STRATEGIES))
            if unknown:
                raise SettingsError(
                    f"allowed_strategies names unknown strategies {unknown}; "
                    f"known: {sorted(STRATEGIES)}"
                )
        if self.engine == "rq":
            parts = urlsplit(self.rq_redis_url)
            if parts.scheme not in RQ_SCHEMES or not (parts.netloc or parts.path):
                raise SettingsError(
                    "engine 'rq' needs rq_redis_url (FXBROKER_RQ_REDIS_URL): the site's Redis "
                    f"as redis://host:port/db, rediss:// or unix://, not {self.rq_redis_url!r}"
                )
            if not self.rq_queue.strip():
                raise SettingsError("rq_queue (FXBROKER_RQ_QUEUE) must not be empty")
        if self.engine == "parsl":
            if not self.parsl_config.strip():
                raise SettingsError(
                    "engine 'parsl' needs parsl_config (FXBROKER_PARSL_CONFIG): the Python file "
                    "that defines its Parsl provider"
                )
            if not self.parsl_run_dir.strip():
                raise SettingsError("parsl_run_dir (FXBROKER_PARSL_RUN_DIR) must not be empty")
        if self.accelerators:
            if self.engine != "process":
                raise SettingsError(
                    "accelerators need engine='process': CUDA_VISIBLE_DEVICES is per process"
                )
            if len(set(self.accelerators)) != len(self.accelerators) or not all(self.accelerators):
                raise SettingsError(
                    f"accelerators must be distinct, non-empty ids, not {self.accelerators!r}"
                )
            object.__setattr__(self, "workers", len(self.accelerators))
        if not self.consumer:
            object.__setattr__(self, "consumer", f"{socket.gethostname()}-{os.getpid()}")

    @property
    def ws_urls(self) -> tuple[str, ...]:
        """The URLs ``ws_url`` names, in order."""
        return tuple(url.strip() for url in self.ws_url.split(",") if url.strip())

    @property
    def capacity(self) -> int:
        """How many tasks this agent holds at most: workers, prefetched tasks, async slots."""
        return self.workers + self.prefetch + self.max_concurrency

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, endpoint_id: str | None = None
    ) -> AgentSettings:
        """Build settings from ``environ`` (default: the process environment).

        ``FXBROKER_WS_URL`` (the gateway) and ``FXBROKER_CREDENTIAL`` are required, and
        ``FXBROKER_ENDPOINT_ID`` unless ``endpoint_id`` is given (it wins over the variable).
        List variables are comma-separated:
        ``FXBROKER_ALLOWED_STRATEGIES`` (such as ``00,11,st``) and
        ``FXBROKER_ALLOWED_FUNCTIONS`` name at least one item (unset: no restriction);
        ``FXBROKER_ACCELERATORS`` (such as ``0,1``) may be empty, for none.
        """
        given = {} if endpoint_id is None else {"endpoint_id": endpoint_id}
        environ = os.environ if environ is None else environ
        return settings_from_env(cls, environ, **given)
