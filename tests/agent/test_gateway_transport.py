"""The agent's gateway transport against a test peer, for what a real gateway cannot be
made to do: send a malformed frame, count the handshakes it refused, hold back the answer
to a withdraw.

Everything a real gateway can serve (credit, outcomes, cancel, walltime, drain, reconnects)
is tested against the real one in :mod:`tests.agent.test_through_gateway`. The peer
(:mod:`tests.agent.gateway_peer`) is a real WebSocket server speaking the agent protocol
with the protocol package's own Ledger; the agent under test has no Redis URL at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from endpoint_agent import Agent, AgentSettings
from sdk.serialize import deserialize, pack_payload
from sdk.states import TaskState
from service_common.agent_protocol import CREDIT_MAX
from tests.agent.gateway_peer import GatewayPeer
from tests.agent.helpers import AHOLD, HOLD, source_code
from tests.conftest import free_port

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
async def peer() -> AsyncIterator[GatewayPeer]:
    gateway = GatewayPeer(credential=uuid.uuid4().hex, port=free_port())
    gateway.codes.update({"double": DOUBLE, "boom": BOOM, "hold": HOLD, "ahold": AHOLD, "nap": NAP})
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


async def test_a_malformed_frame_makes_the_agent_reconnect_not_exit(peer: GatewayPeer) -> None:
    """What a real gateway never sends: a frame that does not decode. The agent drops the
    connection, says hello again, and serves the tasks."""
    async with Agent(settings(peer)) as agent:
        run = await serving(agent)
        await peer.until(lambda: len(peer.hellos) == 1 and peer.statuses, "the first status")
        await peer.send_raw(b"\xc1 not msgpack")
        await peer.until(lambda: len(peer.hellos) == 2, "a second hello")
        peer.add("t-after", "double", pack_payload((3,), {}))
        await peer.until(lambda: "t-after" in peer.outcomes, "the task after the reconnect")
        assert not run.done()
        agent.stop()
        await run
    assert result(peer, "t-after") == 6


async def test_a_refused_credential_is_retried_not_fatal(peer: GatewayPeer) -> None:
    async with Agent(settings(peer, credential="wrong")) as agent:
        run = await serving(agent)
        await peer.until(lambda: peer.refused_auth >= 3, "three refused attempts")
        assert not run.done()
        agent.stop()
        await asyncio.wait_for(run, 30)


async def test_one_withdraw_at_a_time_until_the_gateway_answers(peer: GatewayPeer) -> None:
    """What a real gateway answers at once: a withdraw left unanswered. The agent sends no
    second one meanwhile, and lowers its credit by what the answer says."""
    peer.answer_withdraws = False
    async with Agent(settings(peer, engine="thread")) as agent:
        run = await serving(agent)
        for i in range(300):
            peer.add(f"q{i}", "double", pack_payload((i,), {}))
        await peer.until(lambda: len(peer.outcomes) == 300, "the quick calls")
        await peer.until(lambda: peer.credit() > 8, "credit grown by the look-ahead")
        for i in range(2):
            peer.add(f"n{i}", "nap", pack_payload((0.2,), {}))
        await peer.until(lambda: peer.withdraws, "a withdraw once the naps were seen")
        for i in range(2, 4):  # more windows asked for while the answer is held back
            peer.add(f"n{i}", "nap", pack_payload((0.1,), {}))
        await peer.until(lambda: len(peer.outcomes) == 304, "the second naps")
        assert len(peer.withdraws) == 1
        [withdraw] = peer.withdraws
        before = peer.credit()
        await peer.answer_withdraws_now()
        assert 0 < before - peer.credit() <= withdraw.count
        await peer.until(lambda: peer.credit() <= 2, "credit down to the free workers")
        agent.stop()
        await run
    # The second: the stop's, of all the credit, whose answer confirms the last frames.
    assert [w.count for w in peer.withdraws[1:]] == [CREDIT_MAX]


async def test_a_stop_returns_once_the_gateway_has_applied_the_last_frames(
    peer: GatewayPeer,
) -> None:
    """The stopping agent's hand-backs are applied before it returns: it withdraws all its
    credit last and waits for the answer, which the gateway sends after every earlier frame."""
    async with Agent(settings(peer, engine="thread")) as agent:
        run = await serving(agent)
        peer.add("q0", "double", pack_payload((1,), {}))
        await peer.until(lambda: len(peer.outcomes) == 1, "the first call")
        peer.answer_withdraws = False
        agent.stop()
        await peer.until(lambda: peer.withdraws, "the stop's withdraw")
        await asyncio.sleep(0.3)
        assert not run.done()  # still waiting for the answer
        await peer.answer_withdraws_now()
        await asyncio.wait_for(run, 10)
    assert peer.withdraws[-1].count == CREDIT_MAX


async def test_a_stop_while_the_agent_connects_closes_the_new_connection(
    peer: GatewayPeer,
) -> None:
    """Stopped before its connection opened (nothing to close yet), the agent does not go
    on to serve that connection once it opens: the run returns."""
    peer.handshake_gate = asyncio.Event()
    async with Agent(settings(peer, engine="thread")) as agent:
        run = await serving(agent)
        await peer.until(lambda: peer.handshakes == 1, "the opening handshake")
        agent.stop()
        await asyncio.sleep(0.1)  # the stop finds no connection to close
        peer.handshake_gate.set()
        await asyncio.wait_for(run, 10)
    assert len(peer.hellos) <= 1
