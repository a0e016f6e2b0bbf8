"""A Globus Compute submit's ``result_serializers`` decide how the agent serializes results:
the first strategy that can, in the order given; a failed task naming each reason when none
can. Tasks go in through the web service's ``/v3`` submit route and come out of Redis as
the agent stored them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from endpoint_agent import Agent
from endpoint_agent.result_encoding import encode_result
from sdk.errors import SerializationError
from sdk.serialize import deserialize, pack_payload, strategy_of
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for
from tests.agent.helpers import source_code

JSON = "globus_compute_sdk.serialize.JSONData"
DILL = "globus_compute_sdk.serialize.DillDataBase64"

MAKE = source_code(
    "make",
    """
    def make(kind):
        return {"dict": {"a": [1, 2], "b": None}, "set": {1, 2}, "callable": len}[kind]
    """,
)
AMAKE = source_code(
    "amake",
    """
    async def amake(kind):
        return {"dict": {"a": [1, 2], "b": None}, "set": {1, 2}}[kind]
    """,
)


async def submit_v3(
    endpoint: GatewayEndpoint, function_id: str, kinds: list[str], serializers: list[str] | None
) -> list[str]:
    """Submit one task per kind through ``POST /v3/endpoints/{id}/submit``."""
    assert endpoint.http is not None
    body: dict[str, Any] = {"tasks": {function_id: [pack_payload((k,)) for k in kinds]}}
    if serializers is not None:
        body["result_serializers"] = serializers
    reply = await endpoint.http.post(f"/v3/endpoints/{endpoint.endpoint_id}/submit", json=body)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["tasks"][function_id])


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_the_first_result_serializer_that_can_makes_the_result(
    endpoint: GatewayEndpoint, engine: str
) -> None:
    make = await endpoint.register(MAKE)
    amake = await endpoint.register(AMAKE)
    as_json = await submit_v3(endpoint, make, ["dict", "set", "callable"], [JSON])
    json_first = await submit_v3(endpoint, make, ["dict", "set"], [JSON, DILL])
    dill_first = await submit_v3(endpoint, make, ["dict"], [DILL, JSON])
    default = await submit_v3(endpoint, make, ["dict"], None)
    in_loop = await submit_v3(endpoint, amake, ["dict", "set"], [JSON])

    async with Agent(settings_for(endpoint, engine=engine)) as agent:
        await agent.run(burst=True)

    stored = {}
    for task_id in [*as_json, *json_first, *dill_first, *default, *in_loop]:
        stored[task_id] = await endpoint.task(task_id)
    wanted = {"a": [1, 2], "b": None}

    dict_json, set_json, callable_json = (stored[t] for t in as_json)
    assert dict_json["state"] == TaskState.SUCCESS
    assert dict_json["result"] == "11\n" + json.dumps(wanted)
    assert deserialize(dict_json["result"]) == wanted
    for failed, fragment in [
        (set_json, "'11' (JSONData): TypeError: Object of type set is not JSON serializable"),
        (callable_json, "'11' (JSONData): a data strategy, and the result is a callable"),
    ]:
        assert failed["state"] == TaskState.FAILED and "result" not in failed
        record = json.loads(failed["exception"])
        assert record["type"] == "SerializationError"
        assert record["message"].startswith(
            "the function's result could not be serialized: none of the task's result "
            "serializers can serialize a "
        )
        assert fragment in record["message"]

    dict_first, set_fallback = (stored[t] for t in json_first)
    assert strategy_of(dict_first["result"]) == "11"
    assert strategy_of(set_fallback["result"]) == "00"
    assert deserialize(set_fallback["result"]) == {1, 2}
    assert strategy_of(stored[dill_first[0]]["result"]) == "00"
    assert deserialize(stored[dill_first[0]]["result"]) == wanted
    assert strategy_of(stored[default[0]]["result"]) == "00"

    async_dict, async_set = (stored[t] for t in in_loop)
    assert async_dict["result"] == "11\n" + json.dumps(wanted)
    assert async_set["state"] == TaskState.FAILED
    assert "Object of type set is not JSON serializable" in async_set["exception"]


def test_encode_result_tries_each_strategy_in_order() -> None:
    assert encode_result([1, "x"], ("11",)) == '11\n[1, "x"]'
    assert strategy_of(encode_result({1}, ("11", "00"))) == "00"
    assert strategy_of(encode_result(len, ())) == "01"
    assert strategy_of(encode_result(len, ("11", "01"))) == "01"
    with pytest.raises(SerializationError) as caught:
        encode_result(3, ("zz", "01"))
    assert str(caught.value) == (
        "none of the task's result serializers can serialize a int: "
        "'zz': not a strategy this agent knows; "
        "'01' (DillCode): a code strategy, and the result is not callable"
    )
