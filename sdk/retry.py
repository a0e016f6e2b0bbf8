"""When the SDK tries again, and for how long: pure code, no I/O, no clock of its own.

Both clients (and so the Executor and remote functions) and the result listener wait out an
outage the same way: capped, jittered exponential backoff, for at most ``retry_for_s``
seconds counted from the first failure of the outage, honouring ``Retry-After`` (capped).
The callers pass the time in (``now``, from a monotonic clock), so these decisions are
tested without sleeping.

An :class:`Outage` is shared by every request of one client (and one is kept by each result
listener): once the service has been unreachable for ``retry_for_s``, a request that fails
gives up at once instead of starting a bound of its own. So a queue of submits behind a dead
service fails in about ``retry_for_s``, not in ``retry_for_s`` per request. The first answer
the service gives (any answer that is not retried) ends the outage.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_RETRY_FOR_S = 60.0
"""How long a client waits out an outage unless told otherwise (``retry_for_s``)."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""HTTP answers that mean "not now": rate limited, or a proxy or the service unavailable."""


def check_retry_for_s(value: float) -> float:
    """``value`` if it is a number of seconds ``>= 0`` (0: no retries), else :class:`ValueError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"retry_for_s must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"retry_for_s must be a finite number >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Retry:
    """How an outage is waited out.

    The n-th delay of an outage is ``min(max_delay_s, first_delay_s * 2**(n-1))`` scaled by a
    random factor between 0.5 and 1 (so many clients do not retry in step), or the server's
    ``Retry-After`` when that is longer, capped at ``retry_after_max_s``; never past the end
    of ``retry_for_s``, where one last attempt is made."""

    retry_for_s: float = DEFAULT_RETRY_FOR_S
    """The longest an outage is waited out, from its first failure; 0 turns retries off."""
    first_delay_s: float = 0.1
    """The delay after the first failure (before jitter)."""
    max_delay_s: float = 5.0
    """The longest backoff delay (before jitter)."""
    retry_after_max_s: float = 30.0
    """The longest ``Retry-After`` honoured."""

    def __post_init__(self) -> None:
        check_retry_for_s(self.retry_for_s)
        for name in ("first_delay_s", "max_delay_s", "retry_after_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value!r}")

    def backoff_s(self, failures: int, jitter: float) -> float:
        """The delay after ``failures`` failures in a row; ``jitter`` in [0, 1) picks where
        between half and all of the capped exponential delay it falls."""
        exponent = min(max(0, failures - 1), 64)  # 2**64 * any first delay is past any cap
        capped = min(self.max_delay_s, self.first_delay_s * 2.0**exponent)
        return capped * (0.5 + jitter / 2)


class Outage:
    """Where one outage of one service stands; see the module docstring.

    The caller loops: try; on a failure worth retrying ask :meth:`failed` for the delay
    (``None``: the bound is reached, give up with :meth:`describe`); on an answer call
    :meth:`ended`. One log line when an outage begins and one when it ends, none per retry.
    ``service`` names what is tried in those lines (a URL)."""

    def __init__(
        self, policy: Retry, *, service: str, jitter: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy
        self.service = service
        self.since: float | None = None
        """When the outage began (the first failure since the last answer); None: no outage."""
        self.failures = 0
        """Failures in a row since :attr:`since`."""
        self._jitter = jitter

    def failed(
        self, now: float, reason: str, *, retry_after_s: float | None = None
    ) -> float | None:
        """One more failure at ``now`` (``reason`` says what): the delay before the next
        attempt, or ``None`` when the outage has lasted ``retry_for_s`` (or retries are off)."""
        if self.since is None:
            self.since = now
            if self.policy.retry_for_s > 0:
                log.warning(
                    "%s unavailable (%s); retrying for up to %g s",
                    self.service,
                    reason,
                    self.policy.retry_for_s,
                )
        self.failures += 1
        left = self.since + self.policy.retry_for_s - now
        if left <= 0:
            return None
        delay = self.policy.backoff_s(self.failures, self._jitter())
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.policy.retry_after_max_s))
        return min(delay, left)

    def ended(self, now: float) -> None:
        """The service answered: the next failure starts a new outage."""
        if self.since is not None and self.policy.retry_for_s > 0:
            log.warning("%s answers again after %.1f s", self.service, self.lasted_s(now))
        self.since = None
        self.failures = 0

    def lasted_s(self, now: float) -> float:
        """How long the outage has lasted at ``now`` (0 when there is none)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)

    def describe(self, reason: str, now: float) -> str:
        """Why a call gave up: the last failure and how long the service was tried."""
        if self.policy.retry_for_s == 0:
            return f"{reason} (retries are off: retry_for_s=0)"
        return (
            f"{reason}; gave up after trying for {self.lasted_s(now):.1f} s "
            f"({self.failures} failures in a row, retry_for_s={self.policy.retry_for_s:g})"
        )


def parse_retry_after(value: str | None) -> float | None:
    """The seconds of a ``Retry-After`` header; ``None`` when absent or not a number of
    seconds (the HTTP-date form is not used by fxbroker's services and is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
