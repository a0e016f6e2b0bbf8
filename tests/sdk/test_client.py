"""The synchronous Client against the real web service, agent and Redis.

Tasks go to the idle endpoint and an agent is run in burst mode when the test wants them
done, so every result is read exactly when it is known to be there (no polling)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fxbroker import APIError, Client, TaskPending
from sdk.config import write_config
from tests.sdk.stack import Runner, Services, Stack, threaded
from tests.sdk.workload import fail, scale, square


@pytest.fixture
def platform(
    database_url: str, redis_url: str, key_prefix: str
) -> Iterator[tuple[Services, Stack, Runner]]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack, serve=False) as (services, runner):
        yield services, stack, runner


def test_run_then_get_result(platform: tuple[Services, Stack, Runner]) -> None:
    s, stack, runner = platform
    with Client(s.url, s.token, endpoint_id=s.idle_endpoint_id) as client:
        fid = client.register_function(square)
        assert client.register_function(square) == fid
        assert client.register_function(square, function_name="sq") == fid  # same code
        task_id = client.run(12, function_id=fid)
        with pytest.raises(TaskPending) as caught:
            client.get_result(task_id)
        assert (caught.value.task_id, caught.value.state) == (task_id, "waiting-for-ep")
        assert client.get_task(task_id)["state"] == "waiting-for-ep"
        runner.call(stack.burst(s.idle_endpoint_id))
        assert client.get_result(task_id) == 144
        info = client.get_task(task_id)
        assert info["state"] == "success" and info["function_id"] == fid
        assert client.task_group_id == info["task_group_id"]


def test_batch_run_and_batch_results(platform: tuple[Services, Stack, Runner]) -> None:
    s, stack, runner = platform
    with Client(s.url, s.token) as client:
        sq, sc, bad = (client.register_function(f) for f in (square, scale, fail))
        batch = client.create_batch()
        batch.add(sq, args=(3,))
        batch.add(sc, args=(5,), kwargs={"by": 10})
        batch.add(bad, args=("broken on purpose",))
        assert len(batch) == 3
        task_ids = client.batch_run(s.idle_endpoint_id, batch)
        assert len(set(task_ids)) == 3
        pending = client.get_batch_result(task_ids)
        assert all(r == {"pending": True, "status": "waiting-for-ep"} for r in pending.values())
        runner.call(stack.burst(s.idle_endpoint_id))
        done = client.get_batch_result(task_ids)
        first, second, third = (done[t] for t in task_ids)
        assert first == {"pending": False, "status": "success", "result": 9}
        assert second == {"pending": False, "status": "success", "result": 50}
        assert third["status"] == "failed" and third["pending"] is False
        failed = third["exception"]
        assert isinstance(failed, ValueError) and str(failed) == "broken on purpose"
        with pytest.raises(ValueError) as caught:
            client.get_result(task_ids[2])
        assert "raise ValueError(message)" in caught.value.remote_traceback  # type: ignore[attr-defined]
        group = client.get_task_group(client.task_group_id or "")
        assert group["task_ids"] == task_ids


def test_service_errors_are_api_errors(platform: tuple[Services, Stack, Runner]) -> None:
    s, _, _ = platform
    with Client(s.url, s.token) as client:
        with pytest.raises(APIError) as caught:
            client.get_result("00000000-0000-0000-0000-000000000000")
        assert (caught.value.status, caught.value.code) == (404, "TASK_NOT_FOUND")
        with pytest.raises(APIError) as caught:
            client.get_batch_result(["00000000-0000-0000-0000-000000000000"])
        assert caught.value.status == 404
    with Client(s.url, "not-a-token") as client, pytest.raises(APIError) as caught:
        client.whoami()
    assert caught.value.status == 401


def test_client_finds_what_fxbroker_dev_wrote(
    platform: tuple[Services, Stack, Runner], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _, _ = platform
    for name in ("FXBROKER_URL", "FXBROKER_TOKEN", "FXBROKER_WS_URL", "FXBROKER_ENDPOINT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FXBROKER_HOME", str(tmp_path))
    write_config(tmp_path, url=s.url, ws_url="", token=s.token, endpoint_id=s.endpoint_id)
    with Client() as client:
        assert client.default_endpoint_id == s.endpoint_id
        assert client.whoami()["name"] == "sdk-tester"
        assert client.ws_url == s.ws_url  # not in the file: asked of the web service
