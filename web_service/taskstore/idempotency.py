"""``Idempotency-Key`` on batch submit: a retried request creates nothing new.

The first request with a key claims ``keys.idempotency(user_id, key)`` with ``SET NX GET``
(one round trip, only when the header is present) *before* anything is queued, holding a
record that the batch is underway for at most :data:`CLAIM_TTL_S`. The submit pipeline then
overwrites it with the answer (task group and task ids), kept for ``idempotency_ttl_s``. So:

* a retry after the first request answered gets the same answer and queues nothing;
* a retry while the first is still underway answers 409 ``CONFLICT`` with ``Retry-After``;
* the same key with a different request (another endpoint or body) answers 422
  ``IDEMPOTENCY_KEY_REUSED``;
* if queueing fails, the claim is dropped, so the retry queues the batch (at-least-once);
  if even that fails (Redis went away in the middle of the submit), the claim lapses after
  :data:`CLAIM_TTL_S`, so a key is never stuck "underway" for the whole
  ``idempotency_ttl_s``: the SDK's retries get 409 (or 503) until then, and then queue it.

A request is identified by the sha256 of its endpoint id and its exact body bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import redis.asyncio as aioredis

from sdk.messages import SubmitResponse
from web_service.errors import ApiError, invalid, retry_later

HEADER = "idempotency-key"
KEY_PATTERN = re.compile(r"[!-~]{1,255}")
"""1 to 255 printable ASCII characters, no spaces."""
RETRY_AFTER_S = 1.0
CLAIM_TTL_S = 5
"""How long a claim may say "underway" before it is taken as abandoned (its request died): many
times a submit's own time (one pipelined round trip), and below the SDK's request timeout, so
a client whose request died with its web process waits seconds, not a day, for its retry."""


def parse_key(raw: str | None) -> str | None:
    """The header's value, or None when absent; 422 when it is not 1-255 printable chars."""
    if raw is None:
        return None
    if not KEY_PATTERN.fullmatch(raw):
        raise invalid("Idempotency-Key must be 1 to 255 printable ASCII characters, no spaces")
    return raw


def fingerprint(endpoint_id: str, body: bytes) -> str:
    return hashlib.sha256(endpoint_id.encode() + b"\0" + body).hexdigest()


def answered(request_fingerprint: str, response: SubmitResponse) -> str:
    """The record that replaces the claim once the batch is queued."""
    return json.dumps({"fingerprint": request_fingerprint, "response": response})


async def claim(
    redis: aioredis.Redis, key: str, request_fingerprint: str, *, ttl_s: int
) -> SubmitResponse | None:
    """Claim ``key`` for this request: None when it is ours to queue, else the earlier answer.

    Raises 409 while the first request with the key is underway, 422 when the key was used
    for a different request.
    """
    pending = json.dumps({"fingerprint": request_fingerprint, "response": None})
    previous = await redis.set(key, pending, nx=True, ex=min(ttl_s, CLAIM_TTL_S), get=True)
    if previous is None:
        return None
    record: Any = json.loads(str(previous))
    if record.get("fingerprint") != request_fingerprint:
        raise ApiError(
            422,
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used for a different request; use a new key",
        )
    response = record.get("response")
    if response is None:
        raise retry_later(
            409, "CONFLICT", "a request with this Idempotency-Key is underway", RETRY_AFTER_S
        )
    answer: SubmitResponse = {
        "task_group_id": str(response["task_group_id"]),
        "task_ids": [str(task_id) for task_id in response["task_ids"]],
    }
    return answer


async def release(redis: aioredis.Redis, key: str) -> None:
    """Drop a claim whose batch could not be queued, so a retry can queue it."""
    await redis.delete(key)
