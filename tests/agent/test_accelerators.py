"""One worker per accelerator, each seeing only its own; detection from the node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from endpoint_agent import Agent, AgentSettings
from endpoint_agent.accelerators import detect_accelerators, parse_nvidia_smi
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import Gate, fake_nvidia_smi, source_code

SEEN = source_code(
    "seen",
    """
    import os
    import redis

    def seen(url, started, release):
        client = redis.Redis.from_url(url)
        try:
            client.rpush(started, os.environ["CUDA_VISIBLE_DEVICES"])
            client.blpop([release], timeout=30)
            return os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"]
        finally:
            client.close()
    """,
)


async def test_each_worker_sees_only_its_own_accelerator(
    endpoint: GatewayEndpoint, redis_url: str
) -> None:
    seen = await endpoint.register(SEEN)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(seen, [(gate.args(redis_url), {}) for _ in range(6)])
    settings = settings_for(endpoint, engine="process", accelerators=("0", "1"))
    assert settings.workers == 2

    async with Agent(settings) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        # Two tasks run at once, one in each worker: each sees a different device.
        assert sorted(await gate.wait_started(2)) == ["0", "1"]
        await gate.release(6)
        await asyncio.wait_for(running, timeout=30)

    results = [tuple(await endpoint.result(t)) for t in task_ids]
    assert {device for _, device in results} == {"0", "1"}
    device_of = dict(results)
    assert len(device_of) == 2 and sorted(device_of.values()) == ["0", "1"]  # one per worker
    status = await endpoint.redis.hgetall(endpoint.keys.endpoint_status(endpoint.endpoint_id))
    assert (status["accelerators"], status["workers"]) == ("0,1", "2")


def test_accelerators_come_from_cuda_visible_devices_or_nvidia_smi(tmp_path: Path) -> None:
    assert detect_accelerators({"CUDA_VISIBLE_DEVICES": "2, 3", "PATH": ""}) == ("2", "3")
    assert detect_accelerators({"CUDA_VISIBLE_DEVICES": "", "PATH": ""}) == ()
    assert detect_accelerators({"PATH": str(tmp_path)}) == ()
    fake_nvidia_smi(
        tmp_path,
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1111)",
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2222)",
    )
    assert detect_accelerators({"PATH": str(tmp_path)}) == ("0", "1")
    assert parse_nvidia_smi("No devices were found\n") == ()


def test_accelerators_set_one_process_worker_each() -> None:
    settings = AgentSettings(
        endpoint_id="ep",
        ws_url="ws://127.0.0.1:1",
        credential="fxep_x",
        workers=8,
        accelerators=("0",),
    )
    assert settings.workers == 1
