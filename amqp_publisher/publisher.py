"""The publisher loop: each AMQP task group's results stream, published to its queue.

Every round, the copy (1) reads the list of groups (``fx:amqp:groups``, see
:mod:`service_common.amqp`) now and then and claims each group no copy holds (a lease, ``SET
NX PX``), renewing its claims every third of ``lease_ms``; (2) for every group it holds,
reads up to ``batch_max`` completion notices after the group's cursor (one pipelined
``XRANGE`` for all groups, then one ``HMGET`` per notice too big to carry its outcome);
(3) publishes them to the group's queue in stream order on one channel, persistent
(``delivery_mode`` 2, ``message_id`` the task id, header ``fxbroker-stream-id``), and waits
for the broker's confirms; (4) only then moves the group's cursor to the last entry, in a
Lua script that writes only while the lease is still this copy's. Cost per round with
results: one Redis round trip to read, one to advance, the publishes pipelined on the
channel; with none, one round trip and a wait of ``idle_ms``.

Delivery contract: each result of a group is published once, in completion order (the
order of the results stream), as long as the broker keeps what it confirmed:

* A graceful stop (SIGTERM) ends the round under way (its publishes confirmed, its cursor
  written), then releases the leases: the next copy starts exactly after it.
* A crash (SIGKILL, power loss) or a Redis outage can fall between the broker's confirm and
  the cursor write, so the cursor may lag behind what the queue got. That window is closed
  by the *ledger*: each publish is routed to the group's queue and, in the same broker
  operation, to the group's ledger queue, which keeps only its newest message. Whoever
  takes a group (after its lease lapsed, or after any Redis or RabbitMQ fault in this copy)
  first reads the ledger's message back (``basic.get`` and requeue) and moves the cursor
  to the later of the two. A publish whose frame never reached the broker was not routed
  and is published again; one that was routed is in the ledger and is not. (After its own
  connection broke, a copy reads the ledger on a new connection once the backoff delay has
  passed; frames the broker had received on the old one are, in practice, routed by then:
  a strict bound would need the broker to say so, which AMQP does not.)
* What remains: a broker that itself fails after routing a message to one of the two
  queues and not the other; a notice the settle step appended twice (a Redis failure
  inside its pipeline, :mod:`service_common.tasks.settle`); and a copy that stalls longer
  than its lease while another takes the group over. Each can repeat a result. The
  unmodified SDK's watcher absorbs a repeat: it files results by task id, completes a
  future at most once, and acks and keeps (never surfaces) a result for a future already
  done, so a user sees each result once (``tests/e2e/test_globus_executor.py`` checks it).
* Results are published *at least* as long as the stream keeps them: a group whose queue
  no copy could reach for ``FXBROKER_RESULT_TTL_S`` loses them with the stream.

Faults are ridden out: RabbitMQ or Redis away is waited for with the shared backoff
(:mod:`service_common.retry`), each outage logged once; the loop never exits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TypeVar

import aio_pika.abc
from pamqp import commands as spec

from amqp_publisher.messages import OUTCOME_FIELDS, Outcome, outcome_of, result_body
from amqp_publisher.settings import PublisherSettings
from sdk.keys import Keys
from sdk.messages import stored
from service_common.amqp import (
    EXCHANGE,
    STREAM_ID_HEADER,
    amqp_unavailable,
    connect,
    declare_group,
    queue_name,
)
from service_common.lua import Lua, execute_pipeline
from service_common.redis_client import RedisClient, connect_redis, redis_unavailable
from service_common.retry import DEFAULT_BACKOFF, Outage, wait_or_stop
from service_common.tasks.settle import INLINE

log = logging.getLogger(__name__)

T = TypeVar("T")

START = "0-0"
"""The cursor of a group nothing was published for: before the first stream entry."""

RENEW = Lua(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    keys=["amqp_lease"],
)
"""KEYS: a lease. ARGV: this copy, lease_ms. 1 when the lease is still ours (renewed)."""
RELEASE = Lua(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    keys=["amqp_lease"],
)
ADVANCE = Lua(
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) return 1",
    keys=["amqp_lease", "amqp_cursor"],
)
"""KEYS: the group's lease and cursor. ARGV: this copy, the new cursor, its TTL in seconds.
1 when written; 0 (nothing written) when the lease is no longer this copy's."""


def stream_id(raw: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a pair that orders like the stream."""
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def later(a: str, b: str) -> str:
    return a if stream_id(a) >= stream_id(b) else b


class BrokerAway(Exception):
    """RabbitMQ failed a step (``__cause__`` says how): reconnect and redo the round."""


@dataclass(slots=True)
class Held:
    """A group this copy holds the lease of."""

    task_group_id: str
    renewed_at: float
    cursor: str = START
    reconciled: bool = False
    """False until the cursor was read back (Redis and the ledger) on the current channel."""


class Publisher:
    """``async with Publisher(settings) as p: await p.run()`` (see the module docstring).

    ``run(burst=True)`` returns after the first round that found nothing to publish, so a
    test awaits it instead of sleeping. ``handle_signals``: SIGINT/SIGTERM call :meth:`stop`.
    """

    def __init__(
        self,
        settings: PublisherSettings,
        *,
        instance: str | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.settings = settings
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._handle_signals = handle_signals
        self._keys = Keys(settings.key_prefix)
        self._amqp_keys = Keys(settings.key_prefix)
        self._redis: RedisClient | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._held: dict[str, Held] = {}
        self._next_refresh = 0.0
        self._stop = asyncio.Event()
        self._redis_outage = Outage("Redis", logger=log)
        self._amqp_outage = Outage("RabbitMQ", logger=log)
        self.published = 0
        """Messages this copy published and the broker confirmed."""

    @property
    def held(self) -> frozenset[str]:
        """The task groups this copy holds now."""
        return frozenset(self._held)

    async def __aenter__(self) -> Publisher:
        self._redis = connect_redis(self.settings.redis_url, client_name=self.settings.client_name)
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        try:
            await self._release_all()
        finally:
            await self._disconnect()
            if self._redis is not None:
                await self._redis.aclose()

    def stop(self) -> None:
        """Finish the round under way, then return from :meth:`run`."""
        self._stop.set()

    async def run(self, *, burst: bool = False) -> None:
        """Publish until :meth:`stop` (or, with ``burst``, until a round finds nothing)."""
        failures = 0
        while not self._stop.is_set():
            try:
                published = await self._round()
            except BrokerAway as exc:
                cause = exc.__cause__ or exc
                self._amqp_outage.failed(cause)
                await self._after_fault()
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
                self._redis_outage.failed(exc)
                await self._after_fault()
            else:
                failures = 0
                self._redis_outage.recovered()
                if self._channel is not None:
                    self._amqp_outage.recovered()
                if published == 0:
                    if burst:
                        return
                    await wait_or_stop(self.settings.idle_ms / 1000, self._stop)
                continue
            failures += 1
            await wait_or_stop(DEFAULT_BACKOFF.delay_s(failures), self._stop)

    async def _after_fault(self) -> None:
        """Any fault may fall between a confirm and a cursor write: read every cursor back
        (and reconnect to RabbitMQ, when it was the one that failed) before publishing."""
        if self._amqp_outage.down:
            await self._disconnect()
        for held in self._held.values():
            held.reconciled = False

    # -- one round -------------------------------------------------------------------------

    async def _round(self) -> int:
        now = time.monotonic()
        if now >= self._next_refresh:
            await self._refresh(now)
            self._next_refresh = now + self.settings.refresh_ms / 1000
        await self._renew_due(now)
        if not self._held:
            return 0
        channel = await self._ensure_channel()
        for held in list(self._held.values()):
            if not held.reconciled:
                await self._reconcile(channel, held)
        published = 0
        for held, entries in await self._read():
            published += await self._publish(channel, held, entries)
        return published

    def _redis_client(self) -> RedisClient:
        if self._redis is None:
            raise RuntimeError("use the publisher in `async with`")
        return self._redis

    async def _refresh(self, now: float) -> None:
        """Forget groups past their TTL, claim every group nobody holds, let go of forgotten
        ones. Two round trips (three when there is something to claim)."""
        redis = self._redis_client()
        groups = self._amqp_keys.amqp_groups()
        pipe = redis.pipeline(transaction=False)
        pipe.zremrangebyscore(groups, "-inf", time.time() - self.settings.group_ttl_s)
        pipe.zrange(groups, 0, -1)
        _, listed = await pipe.execute()
        for gone in set(self._held) - set(listed):
            del self._held[gone]
        candidates = [tg for tg in listed if tg not in self._held]
        if not candidates:
            return
        pipe = redis.pipeline(transaction=False)
        for tg in candidates:
            pipe.set(
                self._amqp_keys.amqp_lease(tg), self.instance, nx=True, px=self.settings.lease_ms
            )
        for tg, won in zip(candidates, await pipe.execute(), strict=True):
            if won:
                self._held[tg] = Held(tg, renewed_at=now)
                log.info("publishing task group %s", tg)

    async def _renew_due(self, now: float) -> None:
        due = [
            h for h in self._held.values() if now - h.renewed_at >= self.settings.lease_ms / 3000
        ]
        if not due:
            return
        pipe = self._redis_client().pipeline(transaction=False)
        for held in due:
            await RENEW(
                keys=[self._amqp_keys.amqp_lease(held.task_group_id)],
                args=[self.instance, self.settings.lease_ms],
                client=pipe,
            )
        for held, kept in zip(due, await execute_pipeline(pipe), strict=True):
            if kept:
                held.renewed_at = now
            else:
                self._lost(held.task_group_id)

    def _lost(self, task_group_id: str) -> None:
        log.warning("the lease on task group %s lapsed; another copy publishes it", task_group_id)
        self._held.pop(task_group_id, None)

    async def _reconcile(self, channel: aio_pika.abc.AbstractChannel, held: Held) -> None:
        """Declare the group's queues and set the cursor to the later of Redis's and the
        ledger's (see the module docstring)."""
        tg = held.task_group_id
        ledger = await self._broker(declare_group(channel, tg))
        message = await self._broker(ledger.get(no_ack=False, fail=False))
        in_ledger = START
        if message is not None:
            raw = (message.headers or {}).get(STREAM_ID_HEADER) or START
            in_ledger = raw.decode() if isinstance(raw, bytes) else str(raw)
            await self._broker(message.reject(requeue=True))
        stored = str(await self._redis_client().get(self._amqp_keys.amqp_cursor(tg)) or START)
        held.cursor = later(stored, in_ledger)
        if held.cursor != stored:
            log.warning(
                "task group %s: the broker had results up to %s, the cursor said %s; "
                "resuming after %s",
                tg,
                in_ledger,
                stored,
                held.cursor,
            )
            if not await self._advance(held, held.cursor):
                return
        held.reconciled = True

    async def _read(self) -> list[tuple[Held, list[tuple[str, Outcome]]]]:
        """Up to ``batch_max`` outcomes after each held group's cursor, in stream order."""
        redis = self._redis_client()
        held = list(self._held.values())
        pipe = redis.pipeline(transaction=False)
        for h in held:
            pipe.xrange(
                self._keys.task_group_results(h.task_group_id),
                min=f"({h.cursor}",
                max="+",
                count=self.settings.batch_max,
            )
        found = [(h, entries) for h, entries in zip(held, await pipe.execute(), strict=True)]
        missing = [
            fields["task_id"]
            for _, entries in found
            for _, fields in entries
            if fields.get(INLINE) != "1"
        ]
        hashes: dict[str, dict[str, str]] = {}
        if missing:
            pipe = redis.pipeline(transaction=False)
            names = stored(*OUTCOME_FIELDS)
            for task_id in missing:
                pipe.hmget(self._keys.task(task_id), names)
            for task_id, values in zip(missing, await pipe.execute(), strict=True):
                hashes[task_id] = {
                    name: value
                    for name, value in zip(OUTCOME_FIELDS, values, strict=True)
                    if value is not None
                }
        batches = []
        for h, entries in found:
            if not entries:
                continue
            outcomes = []
            for entry_id, fields in entries:
                task_id = fields["task_id"]
                source = fields if fields.get(INLINE) == "1" else hashes.get(task_id, {})
                outcomes.append((entry_id, outcome_of(task_id, source)))
            batches.append((h, outcomes))
        return batches

    async def _publish(
        self,
        channel: aio_pika.abc.AbstractChannel,
        held: Held,
        outcomes: list[tuple[str, Outcome]],
    ) -> int:
        """Publish ``outcomes`` in order, wait for every confirm, then move the cursor."""
        underlay = await self._broker(channel.get_underlay_channel())
        routing_key = queue_name(held.task_group_id)
        now = datetime.now(UTC)
        # Tasks start in creation order and take the channel's (FIFO) lock in that order,
        # so the frames leave, and the queue holds the messages, in stream order.
        sends = [
            asyncio.create_task(
                underlay.basic_publish(
                    result_body(outcome),
                    exchange=EXCHANGE,
                    routing_key=routing_key,
                    mandatory=True,
                    properties=spec.Basic.Properties(
                        delivery_mode=2,
                        message_id=outcome.task_id,
                        timestamp=now,
                        headers={STREAM_ID_HEADER: entry_id},
                    ),
                )
            )
            for entry_id, outcome in outcomes
        ]
        replies = await asyncio.gather(*sends, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                if isinstance(reply, Exception) and amqp_unavailable(reply):
                    raise BrokerAway(str(reply)) from reply
                raise reply
            if not isinstance(reply, spec.Basic.Ack):  # returned: the queue is gone
                held.reconciled = False
                raise BrokerAway(f"the queue {routing_key} is missing; declaring it again")
        if await self._advance(held, outcomes[-1][0]):
            self.published += len(outcomes)
            log.debug("task group %s: published %d results", held.task_group_id, len(outcomes))
        return len(outcomes)

    async def _advance(self, held: Held, cursor: str) -> bool:
        """Move the group's cursor (only while the lease is ours); False when it was lost."""
        written = await ADVANCE(
            keys=[
                self._amqp_keys.amqp_lease(held.task_group_id),
                self._amqp_keys.amqp_cursor(held.task_group_id),
            ],
            args=[self.instance, cursor, self.settings.group_ttl_s],
            client=self._redis_client(),
        )
        if not written:
            self._lost(held.task_group_id)
            return False
        held.cursor = cursor
        return True

    # -- RabbitMQ --------------------------------------------------------------------------

    async def _broker(self, step: Awaitable[T]) -> T:
        """``await step``, a RabbitMQ fault raised as :class:`BrokerAway`."""
        try:
            return await step
        except Exception as exc:
            if amqp_unavailable(exc):
                raise BrokerAway(str(exc)) from exc
            raise

    async def _ensure_channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        await self._disconnect()
        for held in self._held.values():
            held.reconciled = False
        self._connection = await self._broker(connect(self.settings.amqp_url))
        self._channel = await self._broker(self._connection.channel(publisher_confirms=True))
        return self._channel

    async def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _release_all(self) -> None:
        """Let go of every lease (a graceful stop), so the next copy need not wait them out."""
        if not self._held or self._redis is None:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for tg in self._held:
                await RELEASE(
                    keys=[self._amqp_keys.amqp_lease(tg)], args=[self.instance], client=pipe
                )
            await execute_pipeline(pipe)
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.warning("could not release the leases (%s); they lapse by themselves", exc)
        self._held.clear()


async def run_publisher(settings: PublisherSettings) -> None:
    """Run one copy until SIGINT/SIGTERM; then finish the round and release its groups."""
    async with Publisher(settings, handle_signals=True) as publisher:
        await publisher.run()
