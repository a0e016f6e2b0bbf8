"""What one benchmark run does: counts, repeats and limits, as one frozen settings object.

:meth:`BenchSettings.full` holds the issue's counts; :meth:`BenchSettings.quick` the tiny ones
the smoke test runs (every workload and every peer, figures not meaningful). Nothing is read
from the environment here except by :meth:`BenchSettings.redis_url_from_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """Counts are per repeat; every wait is bounded by ``task_timeout_s``."""

    repeat: int = 3
    quick: bool = False
    throughput_tasks: int = 10_000
    latency_round_trips: int = 300
    seed_tasks: int = 50
    seed_workers: int = 64
    async_tasks: int = 1_000
    async_wide_tasks: int = 10_000
    """The second async row: this many sleeps on an agent with as many async slots."""
    submission_tasks: int = 100_000
    submission_batch: int = 2_000
    fanout_clients: int = 200
    fanout_results: int = 50
    payload_tasks: int = 200
    payload_bytes: int = 1024 * 1024
    """Bytes of each payload task's argument and of its result."""
    demo_tasks: int = 1_000
    """``fxbroker demo --tasks``: tasks per client style (the demo's own default)."""
    engine_tasks: int = 300
    """The engine rows' throughput: no-ops per sample (rq's forking workers run about 50/s)."""
    engine_round_trips: int = 50
    """The engine rows' latency: sequential round trips per sample."""
    pool_workers: int = 2
    poll_interval_s: float = 0.005
    task_timeout_s: float = 300.0
    start_timeout_s: float = 60.0
    redis_url: str | None = None
    redis_cluster: bool = False
    """Run on a private Redis Cluster of three masters instead of ``redis_url``."""
    database_url: str | None = None
    json_path: Path = Path("bench/results.json")
    only: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("repeat", "throughput_tasks", "latency_round_trips", "seed_tasks",
                     "async_tasks", "async_wide_tasks", "submission_tasks", "submission_batch",
                     "fanout_clients", "fanout_results", "payload_tasks", "payload_bytes",
                     "demo_tasks", "engine_tasks", "engine_round_trips",
                     "pool_workers"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if self.seed_workers < self.seed_tasks:
            raise ValueError("seed_workers must be at least seed_tasks (one worker per sleep)")
        if self.submission_batch > 10_000:
            raise ValueError("submission_batch is at most 10,000 (the service's batch limit)")
        if not self.poll_interval_s > 0 or not self.task_timeout_s > 0:
            raise ValueError("poll_interval_s and task_timeout_s must be > 0")

    @classmethod
    def full(cls, **overrides: object) -> BenchSettings:
        """The issue's counts."""
        return replace(cls(), **overrides)  # type: ignore[arg-type]

    @classmethod
    def quick_run(cls, **overrides: object) -> BenchSettings:
        """Tiny counts, one repeat: proves every row is produced, measures nothing."""
        quick = cls(
            repeat=1, quick=True, throughput_tasks=200, latency_round_trips=20, seed_tasks=10,
            seed_workers=16, async_tasks=50, async_wide_tasks=100, submission_tasks=2_000,
            submission_batch=500, fanout_clients=10, fanout_results=5, payload_tasks=4,
            payload_bytes=64 * 1024, demo_tasks=20, engine_tasks=20, engine_round_trips=5,
            task_timeout_s=60.0,
        )  # fmt: skip
        return replace(quick, **overrides)  # type: ignore[arg-type]

    @staticmethod
    def redis_url_from_env() -> str | None:
        return os.environ.get("REDIS_URL") or None
