"""The agent through the gateway transport: credit, outcomes, cancel, drain, reconnects.

The peer (:mod:`tests.agent.gateway_peer`) is a real WebSocket server speaking the agent
protocol with the protocol package's own Ledger; the agent under test has no Redis URL at
all. (Tasks that must wait for the test use a Redis list as their gate, as elsewhere.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from endpoint_agent import Agent, AgentSettings
from sdk.serialize import deserialize, pack_payload
from sdk.states import TaskState
from tests.agent.gateway_peer import GatewayPeer
from tests.agent.helpers import AHOLD, HOLD, Endpoint, Gate, source_code
from tests.conftest import free_port

DOUBLE = source_code("double", "def double(x):\n    return 2 * x\n")
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
async def peer() -> AsyncIterator[GatewayPeer]:
    gateway = GatewayPeer(credential=uuid.uuid4().hex, port=free_port())
    gateway.codes.update({"double": DOUBLE, "boom": BOOM, "hold": HOLD, "ahold": AHOLD})
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def settings(peer: GatewayPeer, **overrides: object) -> AgentSettings:
    options: dict[str, object] = {
        "endpoint_id": "ep",
        "ws_url": f"ws://127.0.0.1:{peer.port}",
        "credential": peer.credential,
        "workers": 2,
        "consumer": "agent-1",
        "block_ms": 100,
    }
    options.update(overrides)
    return AgentSettings(**options)  # type: ignore[arg-type]


async def serving(agent: Agent) -> asyncio.Task[None]:
    return asyncio.create_task(agent.run())


def result(peer: GatewayPeer, task_id: str) -> object:
    (outcome,) = peer.outcomes[task_id]
    assert outcome.state is TaskState.SUCCESS, outcome
    assert outcome.result is not None
    return deserialize(outcome.result)


def test_settings_choose_the_gateway_when_a_credential_and_no_redis_are_given() -> None:
    s = AgentSettings.from_env(
        {"FXBROKER_CREDENTIAL": "c", "FXBROKER_WS_URL": "ws://127.0.0.1:1"}, endpoint_id="ep"
    )
    assert s.uses_gateway and s.redis_url is None
    assert "'c'" not in repr(s)


async def test_tasks_run_with_credit_never_past_the_free_workers(peer: GatewayPeer) -> None:
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for i, tid in enumerate(ids):
        peer.add(tid, "double", pack_payload((i,), {}))
    async with Agent(settings(peer)) as agent:
        assert agent.transport == "gateway"
        run = await serving(agent)
        await peer.until(lambda: len(peer.outcomes) == len(ids), "every outcome")
        agent.stop()
        await run
    assert [result(peer, tid) for tid in ids] == [2 * i for i in range(40)]
    assert peer.max_in_hand <= 2  # strict backpressure: never more than the free workers
    assert peer.hellos[0].capacity.workers == 2
    assert peer.statuses and peer.statuses[-1].draining


async def test_a_raise_and_an_os_exit_fail_only_their_task(peer: GatewayPeer) -> None:
    peer.add("t-raise", "boom", pack_payload(("raise",), {}))
    peer.add("t-exit", "boom", pack_payload(("exit",), {}))
    peer.add("t-ok", "double", pack_payload((4,), {}))
    async with Agent(settings(peer)) as agent:
        run = await serving(agent)
        await peer.until(lambda: len(peer.outcomes) == 3, "three outcomes")
        agent.stop()
        await run
    failed = peer.outcomes["t-raise"][0]
    assert failed.state is TaskState.FAILED and failed.exception is not None
    assert "bad input" in str(failed.exception)
    lost = peer.outcomes["t-exit"][0]
    assert lost.state is TaskState.FAILED
    assert result(peer, "t-ok") == 8


async def test_walltime_fails_a_task_that_runs_too_long(
    peer: GatewayPeer, endpoint: Endpoint, redis_url: str
) -> None:
    gate = Gate(endpoint)
    peer.add("t-slow", "hold", pack_payload(gate.args(redis_url), {}), walltime_s=0.5)
    async with Agent(settings(peer)) as agent:
        run = await serving(agent)
        await peer.until(lambda: "t-slow" in peer.outcomes, "the walltime outcome")
        agent.stop()
        await run
    outcome = peer.outcomes["t-slow"][0]
    assert outcome.state is TaskState.FAILED
    assert "WalltimeExceeded" in str(outcome.exception)


async def test_cancel_frames_stop_running_sync_and_async_tasks(
    peer: GatewayPeer, endpoint: Endpoint, redis_url: str
) -> None:
    gate = Gate(endpoint)
    peer.add("t-sync", "hold", pack_payload(gate.args(redis_url), {}))
    peer.add("t-async", "ahold", pack_payload(gate.args(redis_url), {}))
    async with Agent(settings(peer, max_concurrency=4)) as agent:
        run = await serving(agent)
        await gate.wait_started(2)
        await peer.cancel("t-sync", "t-async", "not-mine")
        await peer.until(lambda: len(peer.outcomes) == 2, "both cancelled")
        agent.stop()
        await run
    assert {o[0].state for o in peer.outcomes.values()} == {TaskState.CANCELLED}


async def test_a_drain_frame_hands_back_what_did_not_finish(
    peer: GatewayPeer, endpoint: Endpoint, redis_url: str
) -> None:
    gate = Gate(endpoint)
    peer.add("t-run", "hold", pack_payload(gate.args(redis_url), {}))
    async with Agent(settings(peer, workers=1)) as agent:
        run = await serving(agent)
        await gate.wait_started(1)
        await peer.drain(0)
        await asyncio.wait_for(run, 30)
    assert [ref.task_id for ref in peer.hand_backs] == ["t-run"]
    assert not peer.outcomes
    assert not peer.handed


async def test_outcomes_are_held_across_a_gateway_restart_and_each_sent_once(
    peer: GatewayPeer, endpoint: Endpoint, redis_url: str
) -> None:
    gate = Gate(endpoint)
    for i in range(2):
        peer.add(f"t-{i}", "hold", pack_payload((*gate.args(redis_url), i), {}))
    async with Agent(settings(peer)) as agent:
        run = await serving(agent)
        await gate.wait_started(2)
        await peer.stop()  # the gateway dies with both tasks running
        await gate.release(2)
        transport = agent._runtime.transport
        deadline = asyncio.get_running_loop().time() + 30
        while getattr(transport, "held_outcomes", 0) < 2:  # finished while it is away
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await peer.start()  # back on the same port
        await peer.until(lambda: len(peer.outcomes) == 2, "both outcomes after the restart")
        agent.stop()
        await run
    assert [result(peer, f"t-{i}") for i in range(2)] == [0, 1]
    assert len(peer.hellos) >= 2 and len(peer.hellos[-1].running) + len(peer.hellos[-1].held) == 2


async def test_a_refused_credential_is_retried_not_fatal(peer: GatewayPeer) -> None:
    async with Agent(settings(peer, credential="wrong")) as agent:
        run = await serving(agent)
        await peer.until(lambda: peer.refused_auth >= 3, "three refused attempts")
        assert not run.done()
        agent.stop()
        await asyncio.wait_for(run, 30)
