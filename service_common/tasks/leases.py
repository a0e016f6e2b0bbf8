"""Leases: a task this agent holds stays its own while the agent lives.

An entry read through the consumer group is *leased* to this agent for ``lease_ms`` of
idleness: after that, any agent of the endpoint may claim it (``XAUTOCLAIM``, see
:meth:`~service_common.tasks.stream.TaskStream.claim`) on the assumption that its agent is gone.
:class:`LeaseKeeper` renews every held entry every ``lease_ms / 3`` (``XCLAIM ... JUSTID``
to itself, which resets the idle time and counts no delivery), so a task that runs for hours
is never taken from a live agent, while one held by a killed agent is claimed about
``lease_ms`` after its last renewal.

An entry reported lost (another agent claimed it: this one was cut off from Redis for a
whole lease) is only logged here: its outcome will be refused by the settle script, so the
task is neither written twice nor acknowledged by the wrong agent.

**Redis outages.** A renewal that fails because Redis is away is retried with the shared
backoff, sooner than the next interval, so the leases are renewed within moments of Redis
coming back; the entries keep their idle time across a restart (the AOF keeps the pending
list), so only an outage longer than about ``lease_ms`` minus one interval lets another
agent take them. Such an outage is logged once, by the shared :class:`Outage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from service_common.redis_client import redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage
from service_common.tasks.stream import TaskStream

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the entries ``held()`` names, every ``interval_s``."""

    def __init__(
        self,
        stream: TaskStream,
        *,
        interval_s: float,
        held: Callable[[], Sequence[str]],
        outage: Outage,
    ) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._held = held
        self._outage = outage

    async def renew(self) -> list[str]:
        """Renew every held entry now (one round trip); returns the ids found lost."""
        lost = await self._stream.touch(list(self._held()))
        if lost:
            log.warning("%d held entries were claimed by another agent: %s", len(lost), lost)
        return lost

    async def run(self, stopped: asyncio.Event) -> None:
        """Renew every ``interval_s`` until ``stopped`` is set; while Redis is away, retry
        with the shared backoff (never longer than ``interval_s`` apart)."""
        failures = 0
        while not stopped.is_set():
            wait_s = self._interval_s
            if failures:
                wait_s = min(wait_s, DEFAULT_BACKOFF.delay_s(failures))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), wait_s)
            if stopped.is_set():
                return
            started = self._outage.now()
            try:
                await self.renew()
            except Exception as exc:
                if redis_unavailable(exc):
                    self._outage.failed(exc, attempt_started=started)
                else:
                    log.exception("renewing leases failed")
                failures += 1
                continue
            failures = 0
            self._outage.recovered()
