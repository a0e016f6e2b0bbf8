"""What Redis knows of an endpoint: its queue's load, its agents' heartbeat, its allow-list.

The web service reads the first two for ``GET /v1/endpoints/{id}/status`` and the metrics,
and writes the third, a mirror of the SQL allow-list that agents check before they run a
task. Key names come from :class:`sdk.keys.Keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sdk.keys import AGENT_GROUP, Keys
from service_common.redis_client import RedisClient


async def endpoint_status(
    redis: RedisClient, keys: Keys, endpoint_id: str
) -> dict[str, str] | None:
    """The latest heartbeat of the endpoint's agents, or None when none is live."""
    status = await redis.hgetall(keys.endpoint_status(endpoint_id))
    return cast(dict[str, str], status) or None  # decode_responses=True: strings


async def endpoint_load(
    redis: RedisClient, keys: Keys, endpoint_ids: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """``{endpoint id: (queued, delivered)}`` from each task stream; one round trip.

    ``queued``: entries no agent has read yet (cancelled ones included until an agent skips
    them); ``delivered``: entries agents read and have not completed. Agents delete an entry
    when they complete it, so the stream length is their sum.
    """
    pipe = redis.pipeline(transaction=False)
    for endpoint_id in endpoint_ids:
        stream = keys.endpoint_tasks(endpoint_id)
        pipe.xlen(stream)
        pipe.xpending(stream, AGENT_GROUP)
    replies = await pipe.execute(raise_on_error=False)
    load: dict[str, tuple[int, int]] = {}
    for index, endpoint_id in enumerate(endpoint_ids):
        length, pending = replies[2 * index], replies[2 * index + 1]
        delivered = int(pending["pending"]) if isinstance(pending, dict) else 0
        total = int(length) if isinstance(length, int) else 0
        load[endpoint_id] = (max(0, total - delivered), delivered)
    return load


async def set_allowed_functions(
    redis: RedisClient, keys: Keys, endpoint_id: str, function_ids: Sequence[str]
) -> None:
    """Mirror an endpoint's allow-list into its Redis set (atomically; one hash slot)."""
    key = keys.endpoint_allowed_functions(endpoint_id)
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    if function_ids:
        pipe.sadd(key, *function_ids)
    await pipe.execute()
