"""Results streams written as the settle step writes them, for the publisher's tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from amqp_publisher.settings import PublisherSettings
from sdk.keys import Keys
from sdk.messages import ExceptionRecord, stored_fields
from sdk.serialize import deserialize, serialize
from sdk.states import TaskState
from service_common.amqp import register_group
from service_common.tasks.settle import notice_fields

BIG = "x" * 10_000
"""A result too big to ride in its notice: the publisher reads it from the task hash."""


@dataclass(frozen=True)
class FakeOutcome:
    """An outcome as the settle step takes it (its ``OutcomeFields`` protocol)."""

    state: TaskState
    result: str | None = None
    exception: ExceptionRecord | None = None
    stdout: str = ""
    stderr: str = ""


def success(value: object) -> FakeOutcome:
    return FakeOutcome(TaskState.SUCCESS, result=serialize(value))


def failure(message: str) -> FakeOutcome:
    return FakeOutcome(
        TaskState.FAILED,
        exception={
            "type": "ValueError",
            "module": "builtins",
            "message": message,
            "traceback": f"Traceback (most recent call last):\nValueError: {message}\n",
        },
    )


async def settle(
    redis: aioredis.Redis, keys: Keys, task_group_id: str, outcome: FakeOutcome
) -> tuple[str, str]:
    """Store one task's outcome and append its notice; ``(task id, notice id)``."""
    task_id = str(uuid.uuid4())
    fields: dict[str, str] = {"state": str(outcome.state)}  # the id is the key's
    if outcome.result is not None:
        fields["result"] = outcome.result
    if outcome.exception is not None:
        fields["exception"] = json.dumps(outcome.exception)
    await redis.hset(keys.task(task_id), mapping=stored_fields(fields))  # type: ignore[misc]
    notice: dict[str | bytes, str] = dict(notice_fields(task_id, str(outcome.state), outcome))
    entry = await redis.xadd(keys.task_group_results(task_group_id), notice)  # type: ignore[arg-type]
    return task_id, str(entry)


async def open_group(redis: aioredis.Redis, prefix: str, task_group_id: str) -> None:
    await register_group(redis, Keys(prefix), task_group_id)


def settings(redis_url: str, amqp_url: str, prefix: str, **given: object) -> PublisherSettings:
    return PublisherSettings(
        redis_url=redis_url,
        amqp_url=amqp_url,
        key_prefix=prefix,
        **given,  # type: ignore[arg-type]
    )


def value_of(data: str) -> object:
    return deserialize(data)
