"""The agent's heartbeat: its status hash on the endpoint, refreshed every ``heartbeat_s``.

``HSET keys.endpoint_status(endpoint_id)`` with the fields of :class:`Status` (all strings in
Redis), then ``PEXPIRE`` it to three heartbeats, so an endpoint whose agents all stopped
beating shows no status. Several agents of one endpoint share the hash; the latest beat wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

from redis.typing import EncodableT, FieldT

from sdk.keys import Keys
from service_common.redis_client import RedisClient, redis_unavailable
from service_common.retry import Outage

log = logging.getLogger(__name__)


def package_version() -> str:
    """fxbroker's installed version (``unknown`` when it runs from an uninstalled tree)."""
    try:
        return version("fxbroker")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Status:
    """One heartbeat. ``capacity`` is how many tasks the agent runs at once (workers plus
    async slots); ``running`` how many it runs now; ``held`` how many it has read and not
    yet settled (running, waiting for a worker, or being written); ``accelerators`` the
    comma-separated accelerator ids its workers are pinned to (empty: none); ``draining``
    ``1`` once it has been asked to stop and reads nothing more."""

    agent: str
    host: str
    version: str
    engine: str
    workers: int
    max_concurrency: int
    capacity: int
    running: int
    held: int
    accelerators: str
    draining: int
    heartbeat_at: float

    def fields(self) -> dict[FieldT, EncodableT]:
        return {name: str(value) for name, value in asdict(self).items()}


async def write_status(redis: RedisClient, key: str, status: Status, *, interval_s: float) -> None:
    """Write ``status`` to the status hash ``key``, expiring three ``interval_s`` from now
    (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping=status.fields())
    pipe.pexpire(key, max(1, round(3000 * interval_s)))
    await pipe.execute()


class Heartbeat:
    """Writes the status hash now (:meth:`beat`) and every ``interval_s`` (:meth:`run`)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        endpoint_id: str,
        *,
        interval_s: float,
        status: Callable[[], Status],
        outage: Outage,
    ) -> None:
        self._redis = redis
        self._outage = outage
        self._key = keys.endpoint_status(endpoint_id)
        self._interval_s = interval_s
        self._status = status

    async def beat(self) -> None:
        """Write one heartbeat (one round trip)."""
        await write_status(self._redis, self._key, self._status(), interval_s=self._interval_s)

    async def run(self, stopped: asyncio.Event) -> None:
        """Beat every ``interval_s`` until ``stopped`` is set; a beat that fails because
        Redis is away is part of the outage (logged once, by the shared :class:`Outage`),
        never fatal. Stopping lets a beat in flight finish rather than cancelling Redis I/O."""
        while not stopped.is_set():
            started = self._outage.now()
            try:
                await self.beat()
            except Exception as exc:
                if redis_unavailable(exc):
                    self._outage.failed(exc, attempt_started=started)
                else:
                    log.exception("heartbeat failed")
            else:
                self._outage.recovered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), self._interval_s)
