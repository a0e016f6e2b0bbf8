"""``fxbroker dev`` with ``FXBROKER_AMQP_URL``: its web service declares a group's queue at
a ``/v3`` submit with ``create_queue``, and its own publisher fills it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from globus_compute_common import messagepack

from fxbroker.stack import DevStack, StackSettings
from fxbroker.workload import square
from sdk.serialize import SOURCE_CODE, deserialize, pack_buffers, pack_payload, serialize
from service_common.amqp import ledger_name, queue_name
from tests.rabbitmq import Broker

DEADLINE_S = 30.0


async def test_the_dev_stack_publishes_executor_results(
    tmp_path: Path, redis_url: str, key_prefix: str, amqp_url: str, broker: Broker
) -> None:
    settings = StackSettings(
        home=tmp_path / "home", web_port=0, ws_port=0, redis_url=redis_url,
        key_prefix=key_prefix, engine="thread", workers=1, max_concurrency=4, amqp_url=amqp_url,
    )  # fmt: skip
    async with DevStack(settings) as stack:
        info = stack.info
        auth = {"Authorization": f"Bearer {info.token}"}
        async with httpx.AsyncClient(base_url=info.url, headers=auth) as http:
            code = pack_buffers([serialize(square, SOURCE_CODE)])
            registered = await http.post(
                "/v3/functions", json={"function_name": "square", "function_code": code}
            )
            fid = registered.json()["function_uuid"]
            body = {"tasks": {fid: [pack_payload((x,)) for x in range(3)]}, "create_queue": True}
            answer = (await http.post(f"/v3/endpoints/{info.endpoint_id}/submit", json=body)).json()
        tg = answer["task_group_id"]
        broker.made += [queue_name(tg), ledger_name(tg)]
        got: list[object] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while len(got) < 3:
            assert loop.time() < deadline, f"only {len(got)} results within {DEADLINE_S} s"
            got += [messagepack.unpack(m.body) for m in await broker.drain(queue_name(tg))]
            await asyncio.sleep(0.05)
    by_task = {str(r.task_id): deserialize(r.data) for r in got}  # type: ignore[attr-defined]
    assert [by_task[t] for t in answer["tasks"][fid]] == [0, 1, 4]
