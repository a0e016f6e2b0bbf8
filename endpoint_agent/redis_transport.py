"""The agent reaching its endpoint through Redis itself: the first of its two transports.

It needs the platform's Redis URL with full rights (issue 11 retires it in favour of
:mod:`endpoint_agent.gateway`). Everything here is the Redis side the agent always had:

* one window is a sweep of entries idle for a whole lease (``XAUTOCLAIM``, at most every
  ``lease_ms / 4``; their agent was lost), else one ``XREADGROUP ... COUNT n`` of new
  entries blocking up to ``block_ms`` (:mod:`endpoint_agent.stream`);
* the window's tasks are started (``running``, attempt counted) and their functions resolved
  (code and the endpoint's allow-list) in one overlapped pair of round trips; a task already
  terminal (``cancelled`` while queued) is only acknowledged, one past ``max_attempts``
  fails with ``WorkerLost``;
* outcomes go to the batched writer (:mod:`endpoint_agent.results`), leases are renewed by
  :mod:`endpoint_agent.leases`, cancel notices come from :mod:`endpoint_agent.cancels`, the
  heartbeat from :mod:`endpoint_agent.heartbeat`; hand-backs re-add the entry at the
  stream's end, attempt not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import replace

from endpoint_agent.functions import FunctionCatalog, FunctionInfo, Resolved
from endpoint_agent.results import ResultWriter
from endpoint_agent.settings import AgentSettings
from endpoint_agent.transport import Host, Received
from endpoint_agent.worker import Outcome, describe, worker_lost
from sdk.errors import DeserializationError
from sdk.keys import Keys
from service_common.errors import SettingsError
from service_common.redis_client import connect_redis, redis_unavailable
from service_common.retry import Outage, retry
from service_common.tasks.cancels import CancelListener
from service_common.tasks.heartbeat import Heartbeat, Status, package_version
from service_common.tasks.leases import LeaseKeeper
from service_common.tasks.settle import Completion
from service_common.tasks.stream import Start, TaskEntry, TaskStream, start_stamp

log = logging.getLogger(__name__)


class RedisTransport:
    """Serves one agent from its endpoint's stream in Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, settings: AgentSettings, host: Host, *, outage: Outage) -> None:
        s = settings
        if s.redis_url is None:
            raise SettingsError("the Redis transport needs redis_url")
        self.settings = s
        self._host = host
        self._outage = outage
        self._keys = Keys(s.key_prefix)
        self._redis = connect_redis(s.redis_url)
        self._stream = TaskStream(self._redis, self._keys, s.endpoint_id, s.consumer)
        self._catalog = FunctionCatalog(
            self._stream.lookup,
            allowed=s.allowed_strategies,
            allowed_functions=s.allowed_functions,
        )
        self._writer = ResultWriter(
            self._redis,
            self._keys,
            s.endpoint_id,
            agent=s.consumer,
            result_ttl_s=s.result_ttl_s,
            on_written=self._written,
            outage=outage,
        )
        self._heartbeat = Heartbeat(
            self._redis,
            self._keys,
            s.endpoint_id,
            interval_s=s.heartbeat_s,
            status=self.status,
            outage=outage,
        )
        self._leases = LeaseKeeper(
            self._stream, interval_s=s.lease_ms / 3000, held=host.held_keys, outage=outage
        )
        self._cancels = CancelListener(
            self._redis, self._keys, s.endpoint_id, on_cancel=host.cancel, outage=outage
        )
        self._entries: dict[str, tuple[TaskEntry, int]] = {}  # by entry id: entry, attempt
        self._pending_notice: dict[str, str] = {}  # skipped entries: the notice to append
        self._stop = asyncio.Event()
        self._version = package_version()
        self._listening = False
        self._next_claim = 0.0

    def status(self) -> Status:
        """What the heartbeat reports."""
        s = self.settings
        held, running, draining = self._host.counts()
        return Status(
            agent=s.consumer,
            host=socket.gethostname(),
            version=self._version,
            engine=s.engine,
            workers=s.workers,
            max_concurrency=s.max_concurrency,
            capacity=s.capacity,
            running=running,
            held=held,
            accelerators=",".join(s.accelerators),
            draining=int(draining),
            heartbeat_at=time.time(),
        )

    def transient(self, exc: BaseException) -> bool:
        return redis_unavailable(exc)

    async def open(self) -> None:
        """Nothing to do: the Redis client connects on its first command."""

    async def aclose(self) -> None:
        try:
            self._writer.give_up()  # one try each; never wait here for Redis to come back
            await self._writer.drain()
        finally:
            await self._redis.aclose()

    async def start(
        self, *, stop: asyncio.Event, stopped: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        self._stop = stop

        async def until_redis(op: str) -> None:
            step = {
                "group": self._stream.ensure_group,
                "cancels": self._cancels.start,
                "beat": self._heartbeat.beat,
            }[op]
            await retry(step, transient=redis_unavailable, outage=self._outage, stop=stop)

        try:
            await until_redis("group")
            await until_redis("cancels")
            self._listening = True
            await until_redis("beat")
        except Exception as exc:
            if not (stop.is_set() and redis_unavailable(exc)):
                raise
        self._next_claim = 0.0
        return [
            asyncio.create_task(self._heartbeat.run(stopped), name="fxbroker-heartbeat"),
            asyncio.create_task(self._leases.run(stopped), name="fxbroker-leases"),
        ]

    async def stopped(self) -> None:
        if self._listening:
            self._listening = False
            await self._cancels.stop()

    # -- windows -----------------------------------------------------------------------

    async def receive(self, count: int, *, burst: bool) -> list[Received]:
        s = self.settings
        if time.monotonic() >= self._next_claim:
            claimed = await self._stream.claim(count, min_idle_ms=s.lease_ms)
            self._outage.recovered()
            self._next_claim = time.monotonic() + s.lease_ms / 4000
            # After an outage this agent's own entries may look idle: they are still its
            # own (it holds them), so they are not started a second time.
            claimed = [entry for entry in claimed if entry.entry_id not in self._entries]
            if claimed:
                log.info("claimed %d tasks from lost agents", len(claimed))
                return await self._start(claimed)
        block_ms = None
        if not burst:
            until_claim_ms = int((self._next_claim - time.monotonic()) * 1000)
            block_ms = max(1, min(s.block_ms, until_claim_ms))
        entries = await self._stream.read(count, block_ms=block_ms)
        self._outage.recovered()
        return await self._start(entries) if entries else []

    async def _start(self, entries: Sequence[TaskEntry]) -> list[Received]:
        """Start the tasks of ``entries`` and resolve their functions.

        Both are independent round trips: overlapped, a read costs one Redis round trip
        less before its tasks run. Both are safe to retry (the start is named by its
        stamp), so a Redis outage is waited out; a stop meanwhile leaves the entries
        pending, to run again after their lease."""
        s = self.settings
        started_at = start_stamp()

        async def start_and_resolve() -> tuple[list[Start], Resolved]:
            return await asyncio.gather(
                self._stream.start(entries, started_at=started_at),
                self._catalog.resolve(entry.function_id for entry in entries),
            )

        try:
            starts, functions = await retry(
                start_and_resolve,
                transient=redis_unavailable,
                outage=self._outage,
                stop=self._stop,
            )
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.warning(
                "stopping while Redis is away: %d tasks read but not started stay pending "
                "and run again after their lease",
                len(entries),
            )
            return []
        received: list[Received] = []
        for entry, start in zip(entries, starts, strict=True):
            key = entry.entry_id
            if not start.run:
                log.debug("task %s is already settled; not running it", entry.task_id)
                self._entries[key] = (entry, 0)
                self._pending_notice[key] = start.pending_notice
                received.append(Received(key, entry.task_id, skip=True))
                continue
            self._entries[key] = (entry, start.attempt)
            base = Received(key, entry.task_id, start.attempt, entry.payload)
            found = functions[entry.function_id]
            if start.attempt > s.max_attempts:
                received.append(replace(base, failure=worker_lost(start.attempt, s.max_attempts)))
                continue
            if not isinstance(found, FunctionInfo):
                received.append(replace(base, failure=found))
                continue
            try:
                walltime_s = entry.task_walltime_s()
            except ValueError as exc:
                error = DeserializationError(f"the task's {exc}")
                received.append(replace(base, failure=describe(error)))
                continue
            received.append(replace(base, function=found, walltime_s=walltime_s))
        return received

    # -- outcomes and hand-backs ------------------------------------------------------

    def settle(self, task: Received, outcome: Outcome | None) -> None:
        entry, attempt = self._entries[task.key]
        self._writer.add(
            Completion(
                entry.entry_id,
                entry.task_id,
                entry.task_group_id,
                outcome,
                attempt,
                pending_notice=self._pending_notice.pop(task.key, "") if outcome is None else "",
            )
        )

    def _written(self, batch: Sequence[Completion]) -> None:
        keys = [c.entry_id for c in batch]
        for key in keys:
            self._entries.pop(key, None)
        self._host.settled(keys)

    async def hand_back(self, tasks: Sequence[Received]) -> None:
        if not tasks:
            return
        pairs = [self._entries[t.key] for t in tasks if t.key in self._entries]
        try:
            count = await self._stream.hand_back(pairs)
            log.info("handed %d tasks back to the stream", count)
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.warning(
                "could not hand %d tasks back while Redis is away (%s); they run again after "
                "their lease",
                len(tasks),
                exc,
            )
        for t in tasks:
            self._entries.pop(t.key, None)

    async def draining(self) -> None:
        try:
            await self._heartbeat.beat()  # operators see the agent draining
        except Exception as exc:
            if not redis_unavailable(exc):
                raise

    async def finish(self, grace_s: float | None) -> None:
        if grace_s is not None:
            # Outcomes still waiting for Redis get one more grace period, then stay pending.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._writer.drain(), grace_s)
            self._writer.give_up()
        await self._writer.drain()
