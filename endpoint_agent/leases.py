"""Leases: a task this agent holds stays its own while the agent lives.

An entry read through the consumer group is *leased* to this agent for ``lease_ms`` of
idleness: after that, any agent of the endpoint may claim it (``XAUTOCLAIM``, see
:meth:`~endpoint_agent.stream.TaskStream.claim`) on the assumption that its agent is gone.
:class:`LeaseKeeper` renews every held entry every ``lease_ms / 3`` (``XCLAIM ... JUSTID``
to itself, which resets the idle time and counts no delivery), so a task that runs for hours
is never taken from a live agent, while one held by a killed agent is claimed about
``lease_ms`` after its last renewal.

An entry reported lost (another agent claimed it: this one was cut off from Redis for a
whole lease) is only logged here: its outcome will be refused by the settle script, so the
task is neither written twice nor acknowledged by the wrong agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from endpoint_agent.stream import TaskStream

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the entries ``held()`` names, every ``interval_s``."""

    def __init__(
        self, stream: TaskStream, *, interval_s: float, held: Callable[[], Sequence[str]]
    ) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._held = held

    async def renew(self) -> list[str]:
        """Renew every held entry now (one round trip); returns the ids found lost."""
        lost = await self._stream.touch(list(self._held()))
        if lost:
            log.warning("%d held entries were claimed by another agent: %s", len(lost), lost)
        return lost

    async def run(self, stopped: asyncio.Event) -> None:
        """Renew every ``interval_s`` until ``stopped`` is set; a failed renewal is logged
        and tried again at the next interval."""
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self._interval_s)
            if stopped.is_set():
                return
            try:
                await self.renew()
            except RedisError:
                log.warning("renewing leases failed", exc_info=True)
