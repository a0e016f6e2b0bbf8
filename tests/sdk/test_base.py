"""The SDK's pure protocol: requests built, answers parsed, results decided."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from sdk import _base
from sdk.errors import APIError, ConfigurationError, TaskFailed, TaskPending
from sdk.messages import TaskInfo, exception_record
from sdk.serialize import deserialize, serialize, unpack_payload


def double(x: int) -> int:
    return 2 * x


def info(state: str, **extra: Any) -> TaskInfo:
    task: dict[str, Any] = {
        "task_id": "t1", "state": state, "endpoint_id": "e", "function_id": "f",
        "task_group_id": "g", "created_at": 1.0, "started_at": None, "completed_at": None,
    }  # fmt: skip
    task.update(extra)
    return task  # type: ignore[return-value]


def boom() -> ValueError:
    try:
        raise ValueError("bad input 42")
    except ValueError as exc:
        return exc


def test_register_function_serializes_code() -> None:
    request = _base.register_function(double, description="doubles")
    assert (request.method, request.path) == ("POST", "/v1/functions")
    assert request.json["function_name"] == "double"
    assert request.json["description"] == "doubles"
    assert deserialize(request.json["function_code"])(4) == 8
    named = _base.register_function(double, function_name="twice")
    assert named.json["function_name"] == "twice" and "description" not in named.json
    with pytest.raises(TypeError):
        _base.register_function(42)  # type: ignore[arg-type]


def test_submit_packs_args_and_kwargs_in_order() -> None:
    batch = _base.Batch()
    batch.add("f1", args=(1, 2), kwargs={"k": "v"})
    batch.add("f2")
    assert len(batch) == 2
    request = _base.submit("ep/1", batch.tasks, None)
    assert (request.method, request.path) == ("POST", "/v1/endpoints/ep%2F1/submit")
    assert "task_group_id" not in request.json
    first, second = request.json["tasks"]
    assert first["function_id"] == "f1"
    assert unpack_payload(first["payload"]) == ((1, 2), {"k": "v"})
    assert unpack_payload(second["payload"]) == ((), {})
    assert _base.submit("e", batch.tasks, "g1").json["task_group_id"] == "g1"


def test_simple_requests() -> None:
    assert _base.get_task("t1") == _base.Request("GET", "/v1/tasks/t1")
    assert _base.batch_status(["a", "b"]).json == {"task_ids": ["a", "b"]}
    assert _base.register_endpoint("gpu").json == {"name": "gpu"}
    assert _base.get_task_group("g").path == "/v1/task_groups/g"
    assert _base.rotate_endpoint_credential("e/1") == _base.Request(
        "POST", "/v1/endpoints/e%2F1/credential"
    )
    assert _base.revoke_endpoint_credential("e") == _base.Request(
        "DELETE", "/v1/endpoints/e/credential"
    )
    assert _base.info().path == "/v1/info"
    assert _base.auth_headers("tok") == {"Authorization": "Bearer tok"}


def test_error_answers_become_api_errors() -> None:
    body = json.dumps({"code": "FUNCTION_NOT_FOUND", "message": "no f9", "request_id": "r1"})
    with pytest.raises(APIError) as caught:
        _base.parse_response(404, body.encode())
    err = caught.value
    assert (err.status, err.code, err.message, err.request_id) == (
        404, "FUNCTION_NOT_FOUND", "no f9", "r1",
    )  # fmt: skip
    assert pickle.loads(pickle.dumps(err)).code == "FUNCTION_NOT_FOUND"


def test_error_without_json_body_still_says_what_happened() -> None:
    with pytest.raises(APIError) as caught:
        _base.parse_response(502, b"Bad Gateway", request_id="hdr")
    assert (caught.value.status, caught.value.code, caught.value.request_id) == (
        502, "HTTP_502", "hdr",
    )  # fmt: skip
    assert "Bad Gateway" in caught.value.message


def test_success_must_be_json() -> None:
    assert _base.parse_response(200, b'{"a": 1}') == {"a": 1}
    with pytest.raises(APIError, match="not JSON"):
        _base.parse_response(200, b"<html>")


def test_parsers_check_their_fields() -> None:
    assert _base.parse_function_id({"function_id": "f"}) == "f"
    assert _base.parse_endpoint_id({"endpoint_id": "e", "name": "n"}) == "e"
    with pytest.raises(APIError, match="function_id"):
        _base.parse_function_id({"id": "f"})
    created = {"endpoint_id": "e", "credential": "fxep_c"}
    assert _base.parse_endpoint_registration(created) == ("e", "fxep_c")
    assert _base.parse_endpoint_registration({"endpoint_id": "e"}) == ("e", None)
    with pytest.raises(APIError, match="credential"):
        _base.parse_endpoint_registration({"endpoint_id": "e", "credential": 7})
    assert _base.parse_credential(created) == "fxep_c"
    assert _base.parse_revoked({"endpoint_id": "e", "revoked": False}) is False
    with pytest.raises(APIError, match="revoked"):
        _base.parse_revoked({"endpoint_id": "e"})
    reply = _base.parse_submit({"task_group_id": "g", "task_ids": ["a", "b"]}, 2)
    assert reply == {"task_group_id": "g", "task_ids": ["a", "b"]}
    with pytest.raises(APIError, match="1 task ids for 2 tasks"):
        _base.parse_submit({"task_group_id": "g", "task_ids": ["a"]}, 2)
    assert _base.parse_ws_url({"ws_url": "ws://h:1"}) == "ws://h:1"
    with pytest.raises(APIError, match="FXBROKER_WS_URL"):
        _base.parse_ws_url({"ws_url": ""})


def test_result_of_a_successful_task() -> None:
    assert _base.task_result(info("success", result=serialize({"v": [1, 2]}))) == {"v": [1, 2]}


@pytest.mark.parametrize("state", ["waiting-for-ep", "running"])
def test_result_of_an_unfinished_task_is_pending(state: str) -> None:
    with pytest.raises(TaskPending) as caught:
        _base.task_result(info(state))
    assert (caught.value.task_id, caught.value.state) == ("t1", state)


def test_result_of_a_failed_task_is_its_own_exception_with_the_remote_traceback() -> None:
    record = exception_record(boom())
    with pytest.raises(ValueError, match="bad input 42") as caught:
        _base.task_result(info("failed", exception=record))
    err: Any = caught.value
    assert err.task_id == "t1" and isinstance(err, TaskFailed) and err.type_name == "ValueError"
    assert 'raise ValueError("bad input 42")' in err.remote_traceback
    assert err.__notes__ == [f"\nRemote traceback of task t1:\n{record['traceback'].rstrip()}"]


def test_result_of_a_failed_task_without_its_pickle_is_task_failed() -> None:
    record = exception_record(boom())
    del record["pickled"]
    with pytest.raises(TaskFailed) as caught:
        _base.task_result(info("failed", exception=record))
    err = caught.value
    assert (err.task_id, err.type_name, err.message) == ("t1", "ValueError", "bad input 42")
    assert 'raise ValueError("bad input 42")' in err.remote_traceback
    assert "Remote traceback" in str(err)


def test_result_of_a_cancelled_task() -> None:
    with pytest.raises(TaskFailed, match="cancelled"):
        _base.task_result(info("cancelled"))


def test_batch_results_funcx_shape() -> None:
    data = {
        "tasks": {
            "t1": info("success", result=serialize(3)),
            "t2": info("running", task_id="t2"),
            "t3": info("failed", task_id="t3", exception=exception_record(boom())),
        },
        "unknown": [],
    }
    results = _base.batch_results(data, ["t1", "t2", "t3"])
    assert results["t1"] == {"pending": False, "status": "success", "result": 3}
    assert results["t2"] == {"pending": True, "status": "running"}
    assert results["t3"]["pending"] is False and results["t3"]["status"] == "failed"
    remote: Any = results["t3"]["exception"]
    assert isinstance(remote, ValueError) and isinstance(remote, TaskFailed)
    assert remote.task_id == "t3"


def test_batch_results_names_unknown_ids() -> None:
    with pytest.raises(APIError, match="unknown task ids: nope") as caught:
        _base.batch_results({"tasks": {}, "unknown": ["nope"]}, ["nope"])
    assert caught.value.status == 404


def test_results_urls_of_several_copies() -> None:
    assert _base.results_urls("ws://a:1") == ["ws://a:1/v1/results"]
    assert _base.results_urls("ws://a:1, wss://b/base/,") == [
        "ws://a:1/v1/results",
        "wss://b/base/v1/results",
    ]
    with pytest.raises(ConfigurationError):
        _base.results_urls(" , ")
    with pytest.raises(ConfigurationError):
        _base.results_urls("ws://a:1,http://b")


def test_results_url() -> None:
    assert _base.results_url("ws://127.0.0.1:8001") == "ws://127.0.0.1:8001/v1/results"
    assert _base.results_url("wss://h/base/") == "wss://h/base/v1/results"
    assert _base.results_url("ws://h/v1") == "ws://h/v1/results"
    assert _base.results_url("ws://h/v1/results") == "ws://h/v1/results"
    with pytest.raises(ConfigurationError):
        _base.results_url("http://h")


def test_frames() -> None:
    assert json.loads(_base.subscribe_frame("g", "5-0")) == {
        "type": "subscribe", "task_group_id": "g", "cursor": "5-0",
    }  # fmt: skip
    assert _base.parse_frame('{"type":"subscribed","task_group_id":"g","cursor":"0"}') == (
        _base.Subscribed("g", "0")
    )
    frame = _base.parse_frame(
        json.dumps({
            "type": "results", "task_group_id": "g", "cursor": "2-0",
            "results": [
                {"task_id": "a", "state": "success", "cursor": "1-0", "result": serialize(1)},
                {"task_id": "b", "state": "failed", "cursor": "2-0",
                 "exception": exception_record(boom())},
            ],
        })
    )  # fmt: skip
    assert isinstance(frame, _base.Results)
    assert [_base.item_outcome(i).value for i in frame.items] == [1, None]
    assert isinstance(_base.item_outcome(frame.items[1]).error, ValueError)
    refused = _base.parse_frame('{"type":"error","code":"NOT_FOUND","message":"no g"}')
    assert refused == _base.Refused("NOT_FOUND", "no g", None)
    for bad in ("nope", "[]", '{"type":"results"}', '{"type":"other"}'):
        with pytest.raises(ValueError):
            _base.parse_frame(bad)


def test_an_undeserializable_result_is_that_tasks_error() -> None:
    item = {"task_id": "a", "state": "success", "cursor": "1-0", "result": "00\nnot base64!"}
    outcome = _base.item_outcome(item)  # type: ignore[arg-type]
    assert outcome.value is None and outcome.error is not None
    assert "deserialize" in str(outcome.error)


def test_error_status_for_ws_codes() -> None:
    assert _base.error_status("UNAUTHORIZED") == 401
    assert _base.error_status("NOT_FOUND") == 404
    assert _base.error_status("BAD_FRAME") == 400


def test_function_key_caches_by_function_and_names() -> None:
    assert _base.function_key(double, None, None) == _base.function_key(double, None, None)
    assert _base.function_key(double, "a", None) != _base.function_key(double, None, None)

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> None: ...

    assert _base.function_key(Unhashable(), None, None) is None
