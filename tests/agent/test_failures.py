"""Failures stay contained: each kind fails only its own task, with a precise error, while
the other tasks of the same run succeed; results over the limit; captured output."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from endpoint_agent import Agent
from sdk.serialize import pack_buffers, serialize
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import source_code

ADD = source_code("add", "def add(a, b=0):\n    return a + b\n")
FAILURES = source_code(
    "misbehave",
    """
    import ctypes
    import os
    import time

    def misbehave(how):
        if how == "raise":
            raise RuntimeError("it went wrong")
        if how == "exit":
            os._exit(7)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "sleep":
            time.sleep(60)
        return how
    """,
)
ASLEEP = source_code(
    "asleep",
    """
    import asyncio

    async def asleep(seconds):
        await asyncio.sleep(seconds)
        return seconds
    """,
)


def foreign_dill(pickled: bytes) -> str:
    """A task payload whose args buffer holds ``pickled`` (bytes no local pickle made)."""
    return pack_buffers(["00\n" + base64.encodebytes(pickled).decode(), serialize({})])


async def test_each_failure_fails_only_its_task(endpoint: GatewayEndpoint, redis_url: str) -> None:
    misbehave = await endpoint.register(FAILURES)
    add = await endpoint.register(ADD)
    asleep = await endpoint.register(ASLEEP)
    raised = await endpoint.submit(misbehave, "raise")
    exited = await endpoint.submit(misbehave, "exit")
    segfault = await endpoint.submit(misbehave, "segfault")
    too_long = await endpoint.submit(misbehave, "sleep")  # the endpoint's walltime stops it
    async_too_long = await endpoint.submit(asleep, 60)
    bad_payload = await endpoint.submit(add, payload="7\n00\nabc")
    newer_protocol = await endpoint.submit(add, payload=foreign_dill(b"\x80\x07K\x01."))
    unknown_opcode = await endpoint.submit(add, payload=foreign_dill(b"\x80\x04\xfe\x00."))
    fine = await endpoint.submit_many(add, [((i, 1), {}) for i in range(6)])
    async_fine = await endpoint.submit(asleep, 0)
    settings = settings_for(endpoint, engine="process", workers=2, walltime_s=1.0)

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    record = await endpoint.failure(raised)
    assert (record["type"], record["message"]) == ("RuntimeError", "it went wrong")
    assert "in misbehave" in record["traceback"]
    record = await endpoint.failure(exited)
    assert record["type"] == "WorkerLost"
    assert "exited with code 7" in record["message"]
    record = await endpoint.failure(segfault)
    assert record["type"] == "WorkerLost"
    assert "killed by SIGSEGV" in record["message"]
    for task_id in (too_long, async_too_long):
        record = await endpoint.failure(task_id)
        assert record["type"] == "WalltimeExceeded"
        assert "walltime of 1 s" in record["message"]
    record = await endpoint.failure(bad_payload)
    assert record["type"] == "DeserializationError"
    assert "truncated" in record["message"]
    for task_id in (newer_protocol, unknown_opcode):
        record = await endpoint.failure(task_id)
        assert record["type"] == "DeserializationError"
        assert "different Python or dill version" in record["message"]
    assert "unsupported pickle protocol: 7" in (await endpoint.failure(newer_protocol))["message"]
    assert [await endpoint.result(t) for t in fine] == [1, 2, 3, 4, 5, 6]
    assert await endpoint.result(async_fine) == 0
    assert len(await endpoint.notices()) == 15
    await endpoint.assert_settled()


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_a_task_walltime_is_the_tighter_of_task_and_endpoint(
    endpoint: GatewayEndpoint, redis_url: str, engine: str
) -> None:
    misbehave = await endpoint.register(FAILURES)
    asleep = await endpoint.register(ASLEEP)
    quick = await endpoint.submit(misbehave, "sleep", walltime_s="0.2")
    quick_async = await endpoint.submit(asleep, 60, walltime_s="0.2")
    capped = await endpoint.submit(asleep, 60, walltime_s="86400")
    bad = await endpoint.submit(asleep, 0, walltime_s="soon")
    settings = settings_for(endpoint, engine=engine, walltime_s=0.4)

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    for task_id in (quick, quick_async):
        record = await endpoint.failure(task_id)
        assert record["type"] == "WalltimeExceeded"
        assert "walltime of 0.2 s" in record["message"]
    record = await endpoint.failure(capped)
    assert "walltime of 0.4 s" in record["message"]
    record = await endpoint.failure(bad)
    assert record["type"] == "DeserializationError"
    assert "walltime_s must be a positive number, not 'soon'" in record["message"]
    await endpoint.assert_settled()


SPAWN = source_code(
    "spawn",
    """
    import subprocess
    import time

    def spawn(pidfile):
        child = subprocess.Popen(["sleep", "60"])
        with open(pidfile, "w") as f:
            f.write(str(child.pid))
        time.sleep(60)
    """,
)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _outlives(pid: int, timeout_s: float) -> bool:
    """Whether ``pid`` is still alive after up to ``timeout_s`` (it may take a moment to
    die once its group was sent SIGKILL)."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(pid)


async def test_a_walltime_kills_what_the_call_started_too(
    endpoint: GatewayEndpoint, redis_url: str, tmp_path: Path
) -> None:
    """The process engine kills the worker's whole process group: a subprocess the call
    started does not outlive it."""
    spawn = await endpoint.register(SPAWN)
    pidfile = tmp_path / "child.pid"
    task_id = await endpoint.submit(spawn, str(pidfile), walltime_s="1")
    async with Agent(settings_for(endpoint, engine="process", workers=1)) as agent:
        await agent.run(burst=True)

    assert (await endpoint.failure(task_id))["type"] == "WalltimeExceeded"
    assert not await asyncio.to_thread(_outlives, int(pidfile.read_text()), 10.0)


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_results_over_the_limit_fail_with_result_too_large(
    endpoint: GatewayEndpoint, redis_url: str, engine: str
) -> None:
    make = await endpoint.register(source_code("make", "def make(n):\n    return 'x' * n\n"))
    amake = await endpoint.register(
        source_code("amake", "async def amake(n):\n    return 'x' * n\n")
    )
    big, small = await endpoint.submit(make, 5000), await endpoint.submit(make, 10)
    abig = await endpoint.submit(amake, 5000)
    settings = settings_for(endpoint, engine=engine, max_result_bytes=1000)

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    for task_id in (big, abig):
        record = await endpoint.failure(task_id)
        assert record["type"] == "ResultTooLarge"
        assert "of at most 1000 bytes" in record["message"]
    assert await endpoint.result(small) == "x" * 10


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_stdout_and_stderr_are_captured_per_task_and_bounded(
    endpoint: GatewayEndpoint, redis_url: str, engine: str
) -> None:
    talk = await endpoint.register(
        source_code(
            "talk",
            """
            import sys

            def talk(i, n):
                print("out", i)
                print("x" * n, file=sys.stderr)
                if i == 2:
                    raise ValueError("after talking")
                return i
            """,
        )
    )
    atalk = await endpoint.register(
        source_code(
            "atalk",
            """
            import asyncio
            import sys

            async def atalk(i):
                await asyncio.sleep(0)
                print("async out", i)
                await asyncio.sleep(0)
                sys.stderr.write(f"async err {i}\\n")
                return i
            """,
        )
    )
    quiet = await endpoint.register(ADD)
    talked = await endpoint.submit_many(talk, [((i, 10), {}) for i in range(3)])
    long = await endpoint.submit(talk, 9, 5000)
    atalked = await endpoint.submit_many(atalk, [((i,), {}) for i in range(3)])
    silent = await endpoint.submit(quiet, 1, 1)
    settings = settings_for(endpoint, engine=engine, max_output_chars=100)

    async with Agent(settings) as agent:
        await agent.run(burst=True)

    for i, task_id in enumerate(talked):
        fields = await endpoint.task(task_id)
        assert (fields["stdout"], fields["stderr"]) == (f"out {i}\n", "x" * 10 + "\n")
    assert (await endpoint.task(talked[2]))["state"] == TaskState.FAILED
    fields = await endpoint.task(long)
    assert fields["stderr"] == "x" * 100 + "\n[fxbroker: 4901 more characters were not kept]\n"
    for i, task_id in enumerate(atalked):
        fields = await endpoint.task(task_id)
        assert (fields["stdout"], fields["stderr"]) == (f"async out {i}\n", f"async err {i}\n")
    fields = await endpoint.task(silent)
    assert "stdout" not in fields and "stderr" not in fields


async def test_allow_lists_refuse_other_functions(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    listed = await endpoint.register(ADD)
    unlisted = await endpoint.register(source_code("sub", "def sub(a, b):\n    return a - b\n"))
    config_only = await endpoint.register(source_code("mul", "def mul(a, b):\n    return a * b\n"))
    allowed_key = endpoint.keys.endpoint_allowed_functions(endpoint.endpoint_id)
    await endpoint.redis.sadd(allowed_key, listed, config_only)
    ok = await endpoint.submit(listed, 1, 2)
    refused = await endpoint.submit(unlisted, 1, 2)
    refused_by_config = await endpoint.submit(config_only, 1, 2)
    settings = settings_for(
        endpoint, engine="thread", allowed_functions=frozenset({listed, unlisted})
    )

    async with Agent(settings) as agent:
        await agent.run(burst=True)
        assert await endpoint.result(ok) == 3
        record = await endpoint.failure(refused)
        assert record["type"] == "FunctionNotAllowed"
        assert "the endpoint's allow-list" in record["message"]
        record = await endpoint.failure(refused_by_config)
        assert record["type"] == "FunctionNotAllowed"
        assert "this agent's allowed_functions" in record["message"]
        # The endpoint's list is asked on every read: emptied, the function runs.
        await endpoint.redis.delete(allowed_key)
        now_ok = await endpoint.submit(unlisted, 5, 2)
        await agent.run(burst=True)

    assert await endpoint.result(now_ok) == 3
    await endpoint.assert_settled()
