"""Prometheus metrics: requests and latencies by route template, tasks submitted, by state."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from sdk.keys import AGENT_GROUP, Keys
from sdk.serialize import SOURCE_CODE, serialize

from .helpers import ApiUser


def ident(x: int) -> int:
    return x


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_tasks_and_states(
    client: httpx.AsyncClient, alice: ApiUser, aredis: aioredis.Redis, keys: Keys
) -> None:
    code = serialize(ident, SOURCE_CODE)
    function_id = (
        await alice.post("/v1/functions", {"function_name": "i", "function_code": code})
    ).json()["function_id"]
    endpoint_id = (await alice.post("/v1/endpoints", {"name": "gpu"})).json()["endpoint_id"]
    task = {"function_id": function_id, "payload": "p"}
    submitted = await alice.post(f"/v1/endpoints/{endpoint_id}/submit", {"tasks": [task] * 4})
    await alice.post(f"/v1/tasks/{submitted.json()['task_ids'][3]}/cancel")
    for _ in range(2):
        await alice.get(f"/v1/tasks/{submitted.json()['task_ids'][0]}")
    await client.get("/v1/whoami")  # 401
    stream = keys.endpoint_tasks(endpoint_id)
    await aredis.xgroup_create(stream, AGENT_GROUP, id="0")
    await aredis.xreadgroup(AGENT_GROUP, "agent", {stream: ">"}, count=1)
    await aredis.hset(keys.endpoint_status(endpoint_id), "agent", "a")

    response = await client.get("/metrics")  # no token needed
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    get_task = (("method", "GET"), ("route", "/v1/tasks/{task_id}"), ("status", "200"))
    assert found[("fxbroker_http_requests_total", get_task)] == 2
    unauthorized = (("method", "GET"), ("route", "/v1/whoami"), ("status", "401"))
    assert found[("fxbroker_http_requests_total", unauthorized)] == 1
    latency = (("method", "GET"), ("route", "/v1/tasks/{task_id}"))
    assert found[("fxbroker_http_request_duration_seconds_count", latency)] == 2
    assert found[("fxbroker_tasks_submitted_total", ())] == 4
    assert found[("fxbroker_tasks_cancelled_total", ())] == 1
    # 4 entries on the stream (the cancelled one stays until an agent skips it), 1 read
    assert found[("fxbroker_tasks", (("state", "waiting-for-ep"),))] == 3
    assert found[("fxbroker_tasks", (("state", "running"),))] == 1
    assert found[("fxbroker_endpoints_online", ())] == 1
    assert not any(
        labels and dict(labels).get("route", "").count("-") >= 4 for _, labels in found
    )  # no raw ids in labels


async def test_unknown_paths_share_one_label(client: httpx.AsyncClient, alice: ApiUser) -> None:
    for path in ("/nothing", "/v1/also-nothing", "/x/y/z"):
        await client.get(path)
    found = samples((await client.get("/metrics")).text)
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert found[("fxbroker_http_requests_total", unmatched)] == 2
