"""Riding out outages: one retry policy and one way to report an outage, for every service.

Redis, SQL or a peer service going away is an *outage* to wait out, never a reason for a
long-lived loop to exit (DESIGN §4). Every such loop retries the failed step with
:class:`Backoff` (capped, jittered exponential delays) and reports through one shared
:class:`Outage` per dependency, which logs **one** warning when an outage starts (what is
down, the error) and **one** line when it ends (how long it lasted), never a traceback per
retry::

    redis_outage = Outage("Redis", logger=log)          # one per dependency and process
    reply = await retry(
        lambda: redis.xreadgroup(...),
        transient=redis_unavailable,                     # which errors mean "it is away"
        outage=redis_outage,
        stop=stopped,                                    # give up (re-raise) once set
    )

The policy is pure (:meth:`Backoff.delay_s` takes its random draw as an argument) and the
clock is injectable, so tests need no timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAX_EXPONENT = 64
"""Doublings beyond this change nothing (the cap is long reached) and would overflow."""


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delays between retries: ``initial_s`` multiplied by ``multiplier`` after each failure,
    capped at ``max_s``; the last ``jitter`` fraction of each delay is random, so the many
    loops of many processes that failed together do not retry in step."""

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, not {self.initial_s}, {self.max_s}")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter <= 1")

    def delay_s(self, failures: int, draw: float | None = None) -> float:
        """The wait after ``failures`` failures in a row (1: the first), for a uniform
        ``draw`` in [0, 1) (a fresh random one when ``None``). Never above ``max_s``."""
        exponent = min(max(failures, 1) - 1, MAX_EXPONENT)
        ceiling = min(self.max_s, self.initial_s * self.multiplier**exponent)
        if draw is None:
            draw = random.random()
        return ceiling * (1 - self.jitter + self.jitter * draw)


DEFAULT_BACKOFF = Backoff()
"""0.1 s doubling to 5 s, the second half of each delay random: what the services use."""


class Outage:
    """The outages of one dependency (``what``: "Redis", "SQL", "the web service").

    Every loop of a process that uses the dependency shares one instance, so an outage is
    logged once however many loops notice it. :meth:`failed` starts an outage (and logs it)
    unless one is under way; :meth:`recovered` ends it (and logs how long it lasted).

    Aftershocks are part of the outage they follow: a failure of an attempt that began
    before the last recovery (a request in flight across it), or one within ``settle_s``
    after it (each pooled connection to a restarted server fails once before it is
    replaced), starts no new outage; the caller just retries."""

    def __init__(
        self,
        what: str,
        *,
        logger: logging.Logger,
        settle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._log = logger
        self._settle_s = settle_s
        self._clock = clock
        self._since: float | None = None
        self._recovered_at = -float("inf")
        self.outages = 0
        """How many outages started so far."""
        self.last_duration_s: float | None = None
        """How long the last outage that ended lasted."""

    @property
    def down(self) -> bool:
        """True while an outage is under way."""
        return self._since is not None

    def now(self) -> float:
        """The outage clock: pass its reading at the start of an attempt to :meth:`failed`."""
        return self._clock()

    def failed(self, exc: BaseException, *, attempt_started: float | None = None) -> bool:
        """Note a failure; True (and one warning logged) when it starts an outage."""
        if self._since is not None:
            return False
        now = self._clock()
        if now < self._recovered_at + self._settle_s or (
            attempt_started is not None and attempt_started < self._recovered_at
        ):
            return False
        self._since = now
        self.outages += 1
        self._log.warning(
            "%s is unavailable (%s: %s); waiting for it with backoff",
            self.what,
            type(exc).__name__,
            exc,
        )
        return True

    def recovered(self) -> float | None:
        """Note a success; when it ends an outage, log and return how long it lasted."""
        if self._since is None:
            return None
        now = self._clock()
        duration_s, self._since = now - self._since, None
        self._recovered_at = now
        self.last_duration_s = duration_s
        self._log.warning("%s is back after %.1f s", self.what, duration_s)
        return duration_s


async def wait_or_stop(delay_s: float, stop: asyncio.Event | None) -> bool:
    """Sleep ``delay_s``, or less when ``stop`` is set meanwhile; True when it was set."""
    if stop is None:
        await asyncio.sleep(delay_s)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    return stop.is_set()


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    outage: Outage,
    backoff: Backoff = DEFAULT_BACKOFF,
    stop: asyncio.Event | None = None,
) -> T:
    """``await op()`` until it succeeds, waiting out errors ``transient`` accepts.

    Other errors propagate at once. When ``stop`` is set (before an attempt, or while
    waiting between attempts) the last transient error is raised instead of retrying."""
    failures = 0
    while True:
        started = outage.now()
        try:
            result = await op()
        except Exception as exc:
            if not transient(exc):
                raise
            outage.failed(exc, attempt_started=started)
            failures += 1
            if (stop is not None and stop.is_set()) or await wait_or_stop(
                backoff.delay_s(failures), stop
            ):
                raise
            continue
        outage.recovered()
        return result
