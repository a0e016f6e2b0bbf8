"""The agent through the real gateway: the web service issues the endpoint's credential and
takes the submits, ws_service's gateway serves the agent over one WebSocket, real Redis
behind it; the agent is given a ws URL and the credential, never a Redis URL.

(Tasks that must wait for the test use a Redis list as their gate, as elsewhere: that is
the task's own code talking to Redis, not the agent.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from endpoint_agent import Agent
from endpoint_agent.processes import LOOKAHEAD_MAX
from sdk.asyncio_client import AsyncClient
from sdk.messages import hash_field
from sdk.states import TaskState
from tests.agent.gateway_stack import (
    WAIT_S,
    GatewayEndpoint,
    GatewayStack,
    agent_settings,
    gateway_stack,
    until,
    ws_url,
)
from tests.agent.helpers import AHOLD, HOLD, Gate, source_code
from tests.conftest import free_port, wait_for_port
from tests.sdk.workload import nap
from ws_service.server import ResultServer

ROOT = Path(__file__).resolve().parents[2]
"""The checkout whose code the ``fxbroker ws`` processes run."""

DOUBLE = source_code("double", "def double(x):\n    return 2 * x\n")
NAP = source_code("nap", "import time\n\ndef nap(s):\n    time.sleep(s)\n    return s\n")
BOOM = source_code(
    "boom",
    """
    import os

    def boom(how):
        if how == "raise":
            raise ValueError("bad input")
        os._exit(3)
    """,
)


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, key_prefix: str, aredis: aioredis.Redis
) -> AsyncIterator[GatewayStack]:
    async with gateway_stack(database_url, redis_url, key_prefix, aredis) as built:
        yield built


@pytest.fixture
async def endpoint(stack: GatewayStack) -> GatewayEndpoint:
    return await stack.endpoint()


async def finished(endpoint: GatewayEndpoint, task_ids: list[str]) -> bool:
    states = [await endpoint.state(t) for t in task_ids]
    return all(s in ("success", "failed", "cancelled") for s in states)


def in_hand(server: ResultServer) -> int:
    """Tasks the copy's gateway holds for its agents: handed without outcome plus credit."""
    return sum(s.ledger.handed + s.ledger.credit for s in server.gateway.sessions)


async def test_tasks_run_with_credit_never_past_the_workers_and_their_lookahead(
    stack: GatewayStack, endpoint: GatewayEndpoint
) -> None:
    fid = await endpoint.register(DOUBLE)
    task_ids = await endpoint.submit_calls(fid, [(i,) for i in range(40)])
    seen: list[int] = []
    async with stack.ws() as server:
        async with Agent(agent_settings(endpoint, ws_url(server))) as agent:
            assert agent.transport == "gateway"
            run = asyncio.create_task(agent.run())

            async def sampled() -> bool:
                seen.append(in_hand(server))
                return await finished(endpoint, task_ids)

            await until(sampled, "every task settled")
            agent.stop()
            await run
    assert [await endpoint.result(t) for t in task_ids] == [2 * i for i in range(40)]
    # Quick calls add the engine's look-ahead, at most its cap per worker; long calls keep
    # the credit at the free workers (test_long_tasks_leave_the_rest_to_a_second_agent).
    assert 2 <= max(seen) <= 2 * LOOKAHEAD_MAX
    assert sorted(await endpoint.notices()) == sorted((t, "success") for t in task_ids)
    await endpoint.assert_settled()


async def test_long_tasks_leave_the_rest_to_a_second_agent(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """While its calls are seen to take long, an agent's credit is its free workers: what
    they cannot start stays in the stream, and a second agent takes it."""
    nap_id, hold = await endpoint.register(NAP), await endpoint.register(HOLD)
    gate = Gate(endpoint)
    async with stack.ws() as server:
        url = ws_url(server)
        async with Agent(agent_settings(endpoint, url, consumer="first")) as first:
            run_first = asyncio.create_task(first.run())
            naps = await endpoint.submit_calls(nap_id, [(0.3,) for _ in range(4)])
            await until(lambda: finished(endpoint, naps), "the naps")  # seen to take long
            assert first.settings.workers == 2 and in_hand(server) <= 2

            held = await endpoint.submit_calls(hold, [(*gate.args(redis_url), i) for i in range(5)])
            await gate.wait_started(2)
            assert in_hand(server) == 2 and await endpoint.pending() == 2
            second = agent_settings(endpoint, url, consumer="second", engine="thread")
            async with Agent(second) as other:
                run_second = asyncio.create_task(other.run())
                await gate.wait_started(2)  # the second agent took what the first left
                assert in_hand(server) == 4
                await gate.release(5)
                await until(lambda: finished(endpoint, held), "every held task settled")
                other.stop()
                await run_second
            first.stop()
            await run_first
    agents = {(await endpoint.task(t))["agent"] for t in held}
    assert agents == {"first", "second"}
    assert [await endpoint.result(t) for t in held] == list(range(5))
    await endpoint.assert_settled()


async def test_credit_grown_on_quick_tasks_is_withdrawn_when_tasks_turn_long(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """Quick calls grow an agent's credit by its look-ahead; once its calls are seen to take
    long it withdraws what its workers cannot start, so a second agent gets the long tasks
    they would otherwise have waited behind."""
    double, nap_id, hold = (
        await endpoint.register(DOUBLE),
        await endpoint.register(NAP),
        await endpoint.register(HOLD),
    )
    gate = Gate(endpoint)
    async with stack.ws() as server:
        url = ws_url(server)
        settings = agent_settings(endpoint, url, consumer="first", engine="thread")
        async with Agent(settings) as first:
            run_first = asyncio.create_task(first.run())
            quick = await endpoint.submit_calls(double, [(i,) for i in range(300)])
            await until(lambda: finished(endpoint, quick), "the quick calls")
            await until(lambda: in_hand(server) > 4 * settings.workers, "credit grown")
            naps = await endpoint.submit_calls(nap_id, [(0.2,) for _ in range(2)])
            await until(lambda: finished(endpoint, naps), "the naps")  # seen to take long
            await until(lambda: in_hand(server) <= 2 * settings.workers, "credit withdrawn")

            second = agent_settings(endpoint, url, consumer="second", engine="thread")
            async with Agent(second) as other:
                run_second = asyncio.create_task(other.run())
                await until(lambda: len(server.gateway.sessions) == 2, "both connected")
                held = await endpoint.submit_calls(
                    hold, [(*gate.args(redis_url), i) for i in range(6)]
                )
                await gate.wait_started(4)  # two workers of each agent
                assert in_hand(server) <= 4 * settings.workers
                await gate.release(6)
                await until(lambda: finished(endpoint, held), "every held task settled")
                other.stop()
                await run_second
            first.stop()
            await run_first
    agents = [(await endpoint.task(t))["agent"] for t in held]
    assert {"first", "second"} == set(agents)
    assert [await endpoint.result(t) for t in held] == list(range(6))
    await endpoint.assert_settled()


async def test_queued_tasks_wait_in_the_stream_not_in_the_agent(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """With every worker busy the agent grants nothing: the rest stay in the stream."""
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_calls(hold, [(*gate.args(redis_url), i) for i in range(6)])
    async with stack.ws() as server:
        async with Agent(agent_settings(endpoint, ws_url(server))) as agent:
            run = asyncio.create_task(agent.run())
            await gate.wait_started(2)
            assert await endpoint.pending() == 2 and in_hand(server) == 2
            for _ in range(4):
                await gate.release(1)
                await gate.wait_started(1)
                assert await endpoint.pending() <= 2 and in_hand(server) <= 2
            await gate.release(2)
            await until(lambda: finished(endpoint, task_ids), "every task settled")
            agent.stop()
            await run
    assert [await endpoint.result(t) for t in task_ids] == list(range(6))


async def test_a_raise_and_an_os_exit_fail_only_their_task(
    stack: GatewayStack, endpoint: GatewayEndpoint
) -> None:
    boom, double = await endpoint.register(BOOM), await endpoint.register(DOUBLE)
    raised, exited = await endpoint.submit_calls(boom, [("raise",), ("exit",)])
    [ok] = await endpoint.submit_calls(double, [(4,)])
    async with stack.ws() as server, Agent(agent_settings(endpoint, ws_url(server))) as agent:
        run = asyncio.create_task(agent.run())
        await until(lambda: finished(endpoint, [raised, exited, ok]), "three outcomes")
        agent.stop()
        await run
    failure = await endpoint.failure(raised)
    assert (failure["type"], failure["message"]) == ("ValueError", "bad input")
    lost = await endpoint.failure(exited)
    assert lost["type"] == "WorkerLost" and "exited with code 3" in lost["message"]
    assert await endpoint.result(ok) == 8


async def test_walltime_fails_a_task_that_runs_too_long(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    [slow] = await endpoint.submit_calls(hold, [gate.args(redis_url)], walltime_s=0.5)
    async with stack.ws() as server, Agent(agent_settings(endpoint, ws_url(server))) as agent:
        run = asyncio.create_task(agent.run())
        await until(lambda: finished(endpoint, [slow]), "the walltime outcome")
        agent.stop()
        await run
    failure = await endpoint.failure(slow)
    assert failure["type"] == "WalltimeExceeded" and "walltime of 0.5 s" in failure["message"]


async def test_cancels_stop_running_tasks_and_queued_ones_never_start(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    hold, ahold = await endpoint.register(HOLD), await endpoint.register(AHOLD)
    gate = Gate(endpoint)
    [sync] = await endpoint.submit_calls(hold, [gate.args(redis_url)])
    async with stack.ws() as server:
        settings = agent_settings(endpoint, ws_url(server), workers=1, max_concurrency=2)
        async with Agent(settings) as agent:
            run = asyncio.create_task(agent.run())
            await gate.wait_started(1)  # the only worker is busy: the next task stays queued
            [queued] = await endpoint.submit_calls(hold, [gate.args(redis_url)])
            await endpoint.cancel(queued)
            await endpoint.cancel(sync)
            await until(lambda: finished(endpoint, [sync, queued]), "two cancels")
            [async_] = await endpoint.submit_calls(ahold, [gate.args(redis_url)])
            await gate.wait_started(1)
            await endpoint.cancel(async_)
            await until(lambda: finished(endpoint, [async_]), "the async task's cancel")
            [after] = await endpoint.submit_calls(await endpoint.register(DOUBLE), [(5,)])
            await until(lambda: finished(endpoint, [after]), "the task after the cancels")
            agent.stop()
            await run
    for task_id in (sync, async_, queued):
        fields = await endpoint.task(task_id)
        assert fields["state"] == TaskState.CANCELLED, fields
        assert "result" not in fields and "exception" not in fields
    assert await endpoint.result(after) == 10
    assert await endpoint.redis.llen(gate.started) == 0  # the queued one never started
    await endpoint.assert_settled()


async def test_a_stopping_agent_hands_back_what_it_did_not_finish(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """The agent stops (no grace) with a task running and one received: it hands both
    back, and they are queued again at once, their attempts not counted."""
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_calls(hold, [gate.args(redis_url)] * 2)
    async with stack.ws() as server:
        settings = agent_settings(endpoint, ws_url(server), workers=1, prefetch=1,
                                  drain_grace_s=0)  # fmt: skip
        async with Agent(settings) as agent:
            run = asyncio.create_task(agent.run())
            await gate.wait_started(1)
            await until(lambda: in_hand(server) == 2, "a running and a prefetched task")
            agent.stop()
            await asyncio.wait_for(run, 30)

        async def queued_again() -> bool:
            stream = await endpoint.redis.xlen(endpoint.stream)
            return await endpoint.pending() == 0 and stream == 2

        await until(queued_again, "both tasks queued again")
        states = [await endpoint.task(t) for t in task_ids]
    assert [(f["state"], f["attempts"]) for f in states] == [("waiting-for-ep", "0")] * 2


async def test_a_gateway_that_goes_away_hands_its_agent_over_to_another_copy(
    stack: GatewayStack, endpoint: GatewayEndpoint, redis_url: str
) -> None:
    """Copy A stops (it drains its agents) with a task running and one received: the agent
    does not stop, it reconnects to copy B, which keeps both tasks (no rerun, attempt 1)."""
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_calls(hold, [(*gate.args(redis_url), i) for i in range(2)])
    port_a = free_port()
    async with stack.ws() as b:
        settings = agent_settings(
            endpoint, f"ws://127.0.0.1:{port_a}", ws_url(b), workers=1, prefetch=1
        )
        async with Agent(settings) as agent:
            async with stack.ws(port=port_a) as a:
                run = asyncio.create_task(agent.run())
                await gate.wait_started(1)
                await until(lambda: in_hand(a) == 2, "a running and a prefetched task")
            # A drained and closed; the agent moved to B with both tasks.
            await until(lambda: in_hand(b) == 2, "both tasks kept by copy B")
            assert not run.done()
            await gate.release(1)
            await gate.wait_started(1)  # the second starts once the first is done
            await gate.release(1)
            await until(lambda: finished(endpoint, task_ids), "both outcomes through B")
            agent.stop()
            await run
    assert [await endpoint.result(t) for t in task_ids] == [0, 1]
    assert [(await endpoint.task(t))["attempts"] for t in task_ids] == ["1", "1"]
    assert await endpoint.redis.llen(gate.started) == 0  # each started once
    await endpoint.assert_settled()


# -- a ws process killed and restarted on the same port ------------------------------------


@pytest.fixture
def ws_process(stack: GatewayStack) -> Iterator[WsProcess]:
    process = WsProcess(stack, free_port())
    try:
        yield process
    finally:
        process.kill()


class WsProcess:
    """A real ``fxbroker ws`` process on a fixed port, killable with SIGKILL."""

    def __init__(self, stack: GatewayStack, port: int, *, lease_ms: int = 60_000) -> None:
        self.port = port
        s = stack.ws_settings
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "REDIS_URL": s.redis_url,
            "FXBROKER_WEB_URL": stack.web_url,
            "FXBROKER_KEY_PREFIX": s.key_prefix,
            "FXBROKER_WS_CLIENT_NAME": s.client_name,
            "FXBROKER_WS_BLOCK_MS": "500",
            "FXBROKER_LEASE_MS": str(lease_ms),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "fxbroker.cli", "ws", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.to_thread(wait_for_port, self.port, 30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


async def test_outcomes_are_held_across_a_ws_kill_and_restart_and_each_settled_once(
    stack: GatewayStack, endpoint: GatewayEndpoint, ws_process: WsProcess, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_calls(hold, [(*gate.args(redis_url), i) for i in range(2)])
    await ws_process.start()
    async with Agent(agent_settings(endpoint, ws_process.url)) as agent:
        run = asyncio.create_task(agent.run())
        await gate.wait_started(2)
        ws_process.kill()  # the gateway dies with both tasks running
        await gate.release(2)
        transport = agent._runtime.transport
        await until(lambda: getattr(transport, "held_outcomes", 0) == 2, "two held outcomes")
        assert [await endpoint.state(t) for t in task_ids] == ["running"] * 2
        await ws_process.start()  # back on the same port, within the lease
        await until(lambda: finished(endpoint, task_ids), "both outcomes after the restart")
        await until(lambda: getattr(transport, "held_outcomes", 0) == 0, "answers")
        agent.stop()
        await run
    assert [await endpoint.result(t) for t in task_ids] == [0, 1]
    assert [(await endpoint.task(t))["attempts"] for t in task_ids] == ["1", "1"]
    assert sorted(await endpoint.notices()) == sorted((t, "success") for t in task_ids)
    await endpoint.assert_settled()


async def test_an_agent_that_reconnects_within_the_lease_keeps_its_running_tasks(
    stack: GatewayStack, endpoint: GatewayEndpoint, ws_process: WsProcess, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_calls(hold, [(*gate.args(redis_url), i) for i in range(2)])
    await ws_process.start()
    async with Agent(agent_settings(endpoint, ws_process.url)) as agent:
        run = asyncio.create_task(agent.run())
        pids = await gate.wait_started(2)
        ws_process.kill()
        await ws_process.start()
        transport = agent._runtime.transport
        await until(lambda: getattr(transport, "connected", False), "the agent reconnected")
        await gate.release(2)  # the same runs finish after the reconnect
        await until(lambda: finished(endpoint, task_ids), "both outcomes")
        agent.stop()
        await run
    assert [await endpoint.result(t) for t in task_ids] == [0, 1]
    assert [(await endpoint.task(t))["attempts"] for t in task_ids] == ["1", "1"]
    assert await endpoint.redis.llen(gate.started) == 0 and len(pids) == 2  # no rerun
    await endpoint.assert_settled()


# -- two copies, one killed mid-run --------------------------------------------------------

FAILOVER_TASKS = 200
FAILOVER_LEASE_MS = 5_000
"""Short enough that what the killed copy had read for its agents and not yet handed out
(entries under the copy's own consumer) is claimed again by the other copy soon; long
enough for the agent to reconnect within it and keep its running tasks."""


@pytest.fixture
def two_ws_processes(stack: GatewayStack) -> Iterator[tuple[WsProcess, WsProcess]]:
    copies = (
        WsProcess(stack, free_port(), lease_ms=FAILOVER_LEASE_MS),
        WsProcess(stack, free_port(), lease_ms=FAILOVER_LEASE_MS),
    )
    try:
        yield copies
    finally:
        for process in copies:
            process.kill()


async def test_a_ws_copy_killed_mid_run_loses_no_task_and_each_result_reaches_its_client_once(
    stack: GatewayStack,
    endpoint: GatewayEndpoint,
    two_ws_processes: tuple[WsProcess, WsProcess],
) -> None:
    """Two ``fxbroker ws`` copies; the agent is given both URLs and connects to the first.
    That copy is killed (SIGKILL) while tasks run: the agent reconnects to the other one
    within the lease and keeps its running tasks; every task runs once (attempt 1), has one
    completion notice, and its result reaches the client (subscribed on the surviving copy)
    once. (What the killed copy had read for the agent and not yet handed out is claimed
    again by the other copy after the lease, its attempt not counted: it never started.)"""
    first, second = two_ws_processes
    await first.start()
    await second.start()
    token = stack.http.headers["Authorization"].removeprefix("Bearer ")
    settings = agent_settings(endpoint, first.url, second.url, workers=2)
    async with (
        Agent(settings) as agent,
        AsyncClient(url=stack.web_url, token=token, ws_url=second.url) as client,
    ):
        run = asyncio.create_task(agent.run())
        fid = await client.register_function(nap)
        handles = [
            client.submit_task(fid, (0.01,), endpoint_id=endpoint.endpoint_id)
            for _ in range(FAILOVER_TASKS)
        ]
        results = asyncio.gather(*(h.future for h in handles))
        await until(
            lambda: sum(h.done() for h in handles) >= FAILOVER_TASKS // 4,
            "a quarter of the results",
        )
        first.kill()  # mid-run: tasks are running and queued
        values = await asyncio.wait_for(results, WAIT_S)
        transport = agent._runtime.transport
        assert getattr(transport, "url", "").startswith(second.url)
        agent.stop()
        await run
    assert values == [0.01] * FAILOVER_TASKS
    task_ids = [str(h.task_id) for h in handles]
    group = await endpoint.redis.hget(endpoint.keys.task(task_ids[0]), hash_field("task_group_id"))
    endpoint.task_group_id = str(group)
    notices = await endpoint.notices()
    assert sorted(notices) == sorted((t, "success") for t in task_ids)  # one each
    # At-least-once: a task the killed copy had started (its attempt counted) but whose window
    # died with the copy is claimed again once its lease lapses, so it may show a second
    # attempt; it is still settled and delivered once (above). More than that is a bug.
    attempts = [int((await endpoint.task(t))["attempts"]) for t in task_ids]
    assert set(attempts) <= {1, 2}
    assert attempts.count(2) <= 8  # at most one window's worth (2 workers' credit and look-ahead)
    await endpoint.assert_settled()
