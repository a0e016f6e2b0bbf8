"""``Idempotency-Key`` on batch submit: a retried request creates nothing new and runs no
task twice.

The first request with a key claims ``keys.idempotency(user_id, key)`` with ``SET NX GET``
*before* anything is queued: on one Redis in the same script call as the submit's writes,
which it then skips (no round trip of its own); else one round trip before them. The claim
holds the request's fingerprint and its *plan*, the task group and task ids it is about to
queue, and says "underway" until a deadline :data:`CLAIM_TTL_S` ahead. The submit pipeline
then overwrites it with the answer (the same ids), kept for ``idempotency_ttl_s``. So:

* a retry after the first request answered gets the same answer and queues nothing;
* a retry while the first is still underway answers 409 ``CONFLICT`` with ``Retry-After``;
* the same key with a different request (another endpoint or body) answers 422
  ``IDEMPOTENCY_KEY_REUSED``;
* if queueing fails, the claim is marked abandoned (its deadline passed), and if even that
  fails (Redis went away in the middle of the submit) the deadline passes by itself within
  :data:`CLAIM_TTL_S`. A retry then *takes over* the plan: it queues the same ids again,
  in the submit's retry mode, which writes only the task hashes that are missing and lets a
  task whose entry is now on the stream twice run once (``web_service.taskstore.tasks.
  enqueue``). A batch cut in the middle by a Redis restart thus ends up queued exactly once,
  and a key is never stuck "underway" for the whole ``idempotency_ttl_s``: the SDK's retries
  get 409 (or 503) for a few seconds at most.

A request is identified by the sha256 of its endpoint id and its exact body bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from sdk.messages import SubmitResponse
from service_common.redis_client import RedisClient
from web_service.errors import ApiError, invalid, retry_later

HEADER = "idempotency-key"
KEY_PATTERN = re.compile(r"[!-~]{1,255}")
"""1 to 255 printable ASCII characters, no spaces."""
RETRY_AFTER_S = 1.0
CLAIM_TTL_S = 5
"""How long a claim may say "underway" before it is taken as abandoned (its request died): many
times a submit's own time (one pipelined round trip), and below the SDK's request timeout, so
a client whose request died with its web process waits seconds, not a day, for its retry."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What :func:`claim` found: an earlier ``answer`` to return, or the ``plan`` to queue
    (``retry``: an abandoned earlier try's plan, which may be partly queued)."""

    plan: SubmitResponse
    answer: SubmitResponse | None = None
    retry: bool = False


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


def underway(request_fingerprint: str, plan: SubmitResponse, until: float | None = None) -> str:
    """The claim of a request about to queue ``plan``: underway until ``until`` (default:
    :data:`CLAIM_TTL_S` from now)."""
    if until is None:
        until = time.time() + CLAIM_TTL_S
    return json.dumps(
        {"fingerprint": request_fingerprint, "response": None, "plan": plan, "until": until}
    )


def _response(record: Any) -> SubmitResponse:
    return {
        "task_group_id": str(record["task_group_id"]),
        "task_ids": [str(task_id) for task_id in record["task_ids"]],
    }


async def claim(
    redis: RedisClient, key: str, request_fingerprint: str, plan: SubmitResponse, *, ttl_s: int
) -> Claim:
    """Claim ``key`` for this request, to queue ``plan``; or the earlier answer; or the plan of
    an abandoned earlier try, taken over.

    Raises 409 while the first request with the key is underway, 422 when the key was used
    for a different request.
    """
    previous = await redis.set(
        key, underway(request_fingerprint, plan), nx=True, ex=ttl_s, get=True
    )
    if previous is None:
        return Claim(plan)
    return await held(redis, key, request_fingerprint, str(previous), ttl_s=ttl_s)


async def held(
    redis: RedisClient, key: str, request_fingerprint: str, previous: str, *, ttl_s: int
) -> Claim:
    """:func:`claim`'s answer when ``key`` already held ``previous`` (a claim made with the
    submit's own writes finds that too, and queued nothing)."""
    record: Any = json.loads(previous)
    if record.get("fingerprint") != request_fingerprint:
        raise ApiError(
            422,
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used for a different request; use a new key",
        )
    if record.get("response") is not None:
        answer = _response(record["response"])
        return Claim(answer, answer=answer)
    earlier = record.get("plan")
    if earlier is None or float(record.get("until", 0)) > time.time():
        raise retry_later(
            409, "CONFLICT", "a request with this Idempotency-Key is underway", RETRY_AFTER_S
        )
    taken = _response(earlier)
    await redis.set(key, underway(request_fingerprint, taken), xx=True, ex=ttl_s)
    return Claim(taken, retry=True)


async def abandon(
    redis: RedisClient, key: str, request_fingerprint: str, plan: SubmitResponse, *, ttl_s: int
) -> None:
    """Mark the claim of a batch that could not be queued as abandoned, so a retry takes its
    plan over at once. Best effort: with Redis away the claim's deadline passes by itself."""
    with contextlib.suppress(RedisError):
        await redis.set(key, underway(request_fingerprint, plan, 0.0), xx=True, ex=ttl_s)
