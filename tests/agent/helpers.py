"""Helpers of the agent tests: write tasks into Redis the way the web service does, and
gates that hold tasks until the test releases them."""

from __future__ import annotations

import stat
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from sdk.keys import AGENT_GROUP, Keys
from sdk.messages import ExceptionRecord, hash_fields, parse_exception, stored_fields
from sdk.serialize import deserialize, pack_payload
from sdk.states import TaskState
from web_service.taskstore.tasks import new_task_ids


def source_code(name: str, source: str) -> str:
    """A ``st`` (source text) code buffer: ``name`` is the function ``source`` defines."""
    return f"st\n{name}:{textwrap.dedent(source)}"


@dataclass
class Endpoint:
    """One endpoint's queue, written to directly as the web service would."""

    redis: aioredis.Redis
    keys: Keys
    endpoint_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    task_group_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def stream(self) -> str:
        return self.keys.endpoint_tasks(self.endpoint_id)

    async def register(self, code: str) -> str:
        """Store a function's code; returns its id."""
        function_id = str(uuid.uuid4())
        await self.redis.set(self.keys.function_code(function_id), code)
        return function_id

    async def submit(
        self,
        function_id: str,
        *args: Any,
        payload: str | None = None,
        state: TaskState = TaskState.WAITING,
        walltime_s: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Queue one task (task hash + stream entry in one pipeline); returns its id."""
        return (await self.submit_many(function_id, [(args, kwargs)], payload, state, walltime_s))[
            0
        ]

    async def submit_many(
        self,
        function_id: str,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        payload: str | None = None,
        state: TaskState = TaskState.WAITING,
        walltime_s: str | None = None,
    ) -> list[str]:
        task_ids = new_task_ids(len(calls))
        pipe = self.redis.pipeline(transaction=False)
        for task_id, (args, kwargs) in zip(task_ids, calls, strict=True):
            pipe.hset(
                self.keys.task(task_id),
                mapping=stored_fields(
                    {  # the web service's record: no task_id, no attempts yet
                        "user_id": "user-1",
                        "endpoint_id": self.endpoint_id,
                        "function_id": function_id,
                        "task_group_id": self.task_group_id,
                        "state": str(state),
                    }
                ),
            )
            entry: dict[FieldT, EncodableT] = {  # as the web service writes it
                "task_id": task_id,
                "payload": pack_payload(args, kwargs) if payload is None else payload,
            }
            if walltime_s is not None:
                entry["walltime_s"] = walltime_s
            pipe.xadd(self.stream, entry)
            pipe.rpush(self.keys.task_group_tasks(self.task_group_id), task_id)
        await pipe.execute()
        return task_ids

    async def task(self, task_id: str) -> dict[str, str]:
        fields: Any = hash_fields(await self.redis.hgetall(self.keys.task(task_id)))
        return dict(fields)

    async def result(self, task_id: str) -> Any:
        fields = await self.task(task_id)
        assert fields["state"] == TaskState.SUCCESS, fields
        return deserialize(fields["result"])

    async def failure(self, task_id: str) -> ExceptionRecord:
        fields = await self.task(task_id)
        assert fields["state"] == TaskState.FAILED, fields
        assert "result" not in fields
        record = parse_exception(fields["exception"])
        assert record is not None
        return record

    async def notices(self) -> list[tuple[str, str]]:
        """The task-group stream: (task_id, state) in the order appended."""
        entries: Any = await self.redis.xrange(self.keys.task_group_results(self.task_group_id))
        return [(f["task_id"], f["state"]) for _, f in entries]

    async def pending(self) -> int:
        """Entries delivered to the agents' group and not yet acknowledged."""
        summary = await self.redis.xpending(self.stream, AGENT_GROUP)
        return int(summary["pending"])

    async def assert_settled(self) -> None:
        """Every entry was acknowledged and deleted."""
        assert await self.redis.xlen(self.stream) == 0
        assert await self.pending() == 0


@dataclass
class Gate:
    """Lets a test see that tasks started and decide when they may finish.

    A task built with :data:`HOLD` / :data:`AHOLD` pushes to ``started``, then waits (up
    to 30 s) for an item on ``release``; the test blocks on ``started``, never sleeps."""

    endpoint: Endpoint
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def started(self) -> str:
        return self.endpoint.keys.task_group_tasks(f"started-{self.name}")

    @property
    def release_key(self) -> str:
        return self.endpoint.keys.task_group_tasks(f"release-{self.name}")

    def args(self, redis_url: str) -> tuple[str, str, str]:
        return (redis_url, self.started, self.release_key)

    async def wait_started(self, count: int = 1) -> list[str]:
        """Block until ``count`` more tasks have started; returns what each pushed."""
        pushed: list[str] = []
        for _ in range(count):
            item = await self.endpoint.redis.blpop([self.started], timeout=30)
            assert item is not None, "a task did not start within 30 s"
            pushed.append(str(item[1]))
        return pushed

    async def release(self, count: int = 1) -> None:
        await self.endpoint.redis.rpush(self.release_key, *(["go"] * count))


# Functions the engine tests (rq, Parsl) run on each engine.
SQUARE = source_code("square", "def square(x):\n    return x * x\n")
LOUD = source_code(
    "loud",
    """
    import sys

    def loud(message):
        print("about to fail")
        print("on stderr", file=sys.stderr)
        raise ValueError(message)
    """,
)
EXIT = source_code("leave", "import os\n\ndef leave(code):\n    os._exit(code)\n")
SLEEPY = source_code("sleepy", "import time\n\ndef sleepy(s):\n    time.sleep(s)\n    return s\n")

HOLD = source_code(
    "hold",
    """
    import os
    import redis

    def hold(url, started, release, value=None):
        client = redis.Redis.from_url(url)
        try:
            client.rpush(started, str(os.getpid()))
            released = client.blpop([release], timeout=30) is not None
            return value if value is not None else released
        finally:
            client.close()
    """,
)

AHOLD = source_code(
    "ahold",
    """
    import redis.asyncio as aioredis

    async def ahold(url, started, release, value=None):
        client = aioredis.Redis.from_url(url)
        try:
            await client.rpush(started, "async")
            released = await client.blpop([release], timeout=30) is not None
            return value if value is not None else released
        finally:
            await client.aclose()
    """,
)


def fake_nvidia_smi(folder: Path, *gpus: str) -> None:
    """An ``nvidia-smi`` in ``folder`` whose ``-L`` lists ``gpus`` (``"GPU 0: ... (UUID:
    GPU-...)"`` lines), for a node without one."""
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in gpus))
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
