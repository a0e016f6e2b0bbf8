"""The web service's side of Executor results: a ``/v3`` submit with ``create_queue``
declares the group's queue on the real RabbitMQ and records the group for the publisher;
``/v2/get_amqp_result_connection_url`` hands that SDK the matching prefix."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from sdk.serialize import SOURCE_CODE, pack_buffers, pack_payload, serialize
from service_common.amqp import QUEUE_PREFIX, ledger_name, queue_name
from tests.rabbitmq import Broker
from tests.web.helpers import ApiUser, assert_error, in_process_client
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings


def double(x: int) -> int:
    return 2 * x


def _settings(
    database_url: str, redis_url: str, prefix: str, amqp_url: str, public_url: str = ""
) -> WebSettings:
    return WebSettings(
        database_url=database_url,
        redis_url=redis_url,
        key_prefix=prefix,
        amqp_url=amqp_url,
        amqp_public_url=public_url,
    )


@pytest.mark.parametrize("public_url", ["", "amqp://guest:guest@rabbitmq.invalid:5672/%2F"])
async def test_a_queue_is_declared_and_recorded_before_the_submit_answers(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    amqp_url: str,
    aredis: aioredis.Redis,
    broker: Broker,
    public_url: str,
) -> None:
    """The service declares on ``FXBROKER_AMQP_URL``; it hands that SDK
    ``FXBROKER_AMQP_PUBLIC_URL`` when set (a name only the SDK's machine resolves)."""
    upgrade(database_url)
    settings = _settings(database_url, redis_url, key_prefix, amqp_url, public_url)
    async with in_process_client(create_app(settings)) as http:
        user_id, token = await create_user(database_url, "alice")
        alice = ApiUser(user_id, "alice", token, http)
        connection = (await alice.get("/v2/get_amqp_result_connection_url")).json()
        handed = public_url or amqp_url
        assert connection == {"queue_prefix": QUEUE_PREFIX, "connection_url": handed}

        code = pack_buffers([serialize(double, SOURCE_CODE)])
        fid = (
            await alice.post("/v3/functions", {"function_name": "double", "function_code": code})
        ).json()["function_uuid"]
        eid = (await alice.post("/v3/endpoints", {"endpoint_name": "gpu"})).json()["endpoint_id"]
        body = {"tasks": {fid: [pack_payload((1,))]}, "create_queue": True}
        answer = await alice.post(f"/v3/endpoints/{eid}/submit", body)
        assert answer.status_code == 200, answer.text
        tg = answer.json()["task_group_id"]
        broker.made += [queue_name(tg), ledger_name(tg)]

        declared = await broker.channel.declare_queue(queue_name(tg), passive=True)
        assert declared.name == connection["queue_prefix"] + tg
        assert await aredis.zscore(Keys(key_prefix).amqp_groups(), tg) is not None
        again = await alice.post(f"/v3/endpoints/{eid}/submit", {**body, "task_group_id": tg})
        assert again.status_code == 200 and again.json()["task_group_id"] == tg


async def test_rabbitmq_away_answers_503_naming_it(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    from tests.conftest import free_port

    upgrade(database_url)
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    async with in_process_client(
        create_app(_settings(database_url, redis_url, key_prefix, closed))
    ) as http:
        user_id, token = await create_user(database_url, "alice")
        alice = ApiUser(user_id, "alice", token, http)
        code = pack_buffers([serialize(double, SOURCE_CODE)])
        fid = (
            await alice.post("/v3/functions", {"function_name": "double", "function_code": code})
        ).json()["function_uuid"]
        eid = (await alice.post("/v3/endpoints", {"endpoint_name": "gpu"})).json()["endpoint_id"]
        body = {"tasks": {fid: [pack_payload((1,))]}, "create_queue": True}
        refused = await alice.post(f"/v3/endpoints/{eid}/submit", body)
        assert "RabbitMQ" in assert_error(refused, 503, "AMQP_UNAVAILABLE")["message"]
        assert refused.headers["retry-after"] == "5"
