"""Per-user request rate limit: a token bucket per user, kept in process.

Each user's bucket holds up to ``burst`` requests and refills at ``rate_per_s``; a request
that finds it empty is answered 429 ``RATE_LIMITED`` with ``Retry-After`` (whole seconds
until one request's worth has refilled). The buckets live in each web process, so behind N
processes a user gets up to N times the rate: the limit protects each process, at no Redis
round trip on the hot path. At most ``max_users`` buckets are kept (least recently used
first out; a forgotten bucket starts full again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service_common.cache import LRUCache

MAX_USERS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """``rate_per_s`` of 0 switches the limit off."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = MAX_USERS,
    ) -> None:
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: LRUCache[str, _Bucket] = LRUCache(max_items=max_users)

    @property
    def enabled(self) -> bool:
        return self._rate_per_s > 0

    def acquire(self, user_id: str) -> float:
        """Take one request from the user's bucket: 0.0 if allowed, else seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets.put(user_id, bucket)
        bucket.tokens = min(
            self._burst, bucket.tokens + (now - bucket.updated_at) * self._rate_per_s
        )
        bucket.updated_at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate_per_s
