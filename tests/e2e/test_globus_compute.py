"""The unmodified Globus Compute SDK against ``fxbroker web``/``ws``/``endpoint start``.

The SDK is configured by environment variables only, as a user's script would be:
``GLOBUS_SDK_ENVIRONMENT=local`` (its compute URL is then ``http://localhost:5000``, fixed in
that SDK), ``GLOBUS_SDK_SERVICE_URL_AUTH`` (globus_sdk's Auth base URL: the token route) and
``GLOBUS_COMPUTE_CLIENT_ID`` / ``_SECRET`` (minted by ``fxbroker user client-credentials``).
The test's web service listens on a free port, not on 5000: ``http_proxy`` (read by the
``requests`` library under globus_sdk) sends the SDK's requests for ``localhost:5000`` to it
in absolute form, which an HTTP server must accept (RFC 9112 §3.2.2).

Every Globus Compute route of the web service is called here through that SDK's own methods,
never raw HTTP (the token routes too: ``POST /v2/oauth2/token`` by every ``Client()`` here,
``POST /v2/oauth2/token/revoke`` by ``Client.logout``, in
:func:`test_logout_revokes_the_token`). The test column names tests by their keys in
:data:`TABLE_TESTS`;
:func:`test_the_route_table_is_complete` holds the table to the routes served and the tests:

============================================  =============================  ==================
route                                         SDK method                     test
============================================  =============================  ==================
GET /v2/version                               Client(), version_check        routes
POST /v3/functions                            register_function,             run
                                              register_source_code
GET /v2/functions/{id}                        get_function                   routes
DELETE /v2/functions/{id}                     delete_function                routes
POST /v3/endpoints                            register_endpoint(name, None)  routes
PUT /v3/endpoints/{id}                        register_endpoint(name, id)    routes
GET /v2/endpoints                             get_endpoints                  routes
GET /v2/endpoints/{id}                        get_endpoint_metadata          routes
GET /v2/endpoints/{id}/status                 get_endpoint_status            routes
DELETE /v2/endpoints/{id}                     delete_endpoint                routes
POST /v3/endpoints/{id}/lock                  stop_endpoint                  routes
GET /v3/endpoints/{id}/allowed_functions      get_allowed_functions          routes
POST /v3/endpoints/{id}/submit                run, batch_run,                run, batch,
                                              Executor.submit                executor.results
GET /v2/tasks/{id}                            get_task, get_result           run
POST /v2/batch_status                         get_batch_result,              batch,
                                              Executor.reload_tasks          executor.reload
GET /v2/taskgroup/{id}                        Executor.reload_tasks          batch,
                                                                             executor.reload
GET /v2/get_amqp_result_connection_url        get_result_amqp_url,           routes,
                                              Executor's result watcher      executor.results
============================================  =============================  ==================
"""

from __future__ import annotations

import importlib
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
from globus_compute_sdk import Client, Executor, ShellFunction, ShellResult
from globus_compute_sdk.errors import TaskExecutionFailed, TaskPending, VersionMismatch
from globus_sdk.services.compute.errors import ComputeAPIError

from fxbroker.workload import fail, square
from tests.e2e.conftest import Platform
from tests.e2e.processes import FXBROKER
from web_service.routes import compute_v2, compute_v3

DEADLINE_S = 60.0
POLL_S = 0.05
TABLE_TESTS = {
    "run": "tests.e2e.test_globus_compute.test_register_run_poll_and_fail",
    "batch": "tests.e2e.test_globus_compute.test_batch_of_100",
    "routes": "tests.e2e.test_globus_compute.test_function_and_endpoint_routes",
    "executor.results": (
        "tests.e2e.test_globus_executor.test_an_executor_gets_every_result_and_a_remote_exception"
    ),
    "executor.reload": "tests.e2e.test_globus_executor.test_a_new_executor_reloads_the_task_group",
}
"""The tests of the module docstring's route table, by the keys its test column uses."""


def wait_until(condition: Callable[[], bool], *, timeout_s: float) -> None:
    """Ask ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout_s} s")
        time.sleep(POLL_S)


def _greet(name: str) -> str:
    return f"hello {name}"


GREET_SOURCE = 'def greet(name):\n    return f"hello {name}"\n'


@pytest.fixture(scope="module")
def client_credentials(platform: Platform) -> tuple[str, str]:
    out = subprocess.run(
        [*FXBROKER, "user", "client-credentials", "e2e"],
        env=platform.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    values = dict(line.split("=", 1) for line in out.split())
    return values["GLOBUS_COMPUTE_CLIENT_ID"], values["GLOBUS_COMPUTE_CLIENT_SECRET"]


@pytest.fixture
def compute_env(
    platform: Platform,
    client_credentials: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """What a user sets to point an unmodified script at fxbroker (and nothing else)."""
    client_id, secret = client_credentials
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLOBUS_SDK_ENVIRONMENT", "local")
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", f"{platform.url}/")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", client_id)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", secret)
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "gc"))
    monkeypatch.setenv("http_proxy", platform.url)
    monkeypatch.setenv("HTTP_PROXY", platform.url)
    yield


def _result(gc: Client, task_id: str) -> Any:
    """The task's result once it finished (TaskPending until then)."""
    found: list[Any] = []

    def done() -> bool:
        try:
            found.append(gc.get_result(task_id))
        except TaskPending:
            return False
        return True

    wait_until(done, timeout_s=DEADLINE_S)
    return found[0]


def _raises(call: Callable[[], Any], kind: type[BaseException]) -> BaseException:
    with pytest.raises(kind) as info:
        call()
    return info.value


def test_register_run_poll_and_fail(platform: Platform, compute_env: None) -> None:
    gc = Client()
    fid = gc.register_function(square)
    task_id = gc.run(7, endpoint_id=platform.endpoint_id, function_id=fid)
    assert str(uuid.UUID(task_id)) == task_id
    assert _result(gc, task_id) == 49
    assert gc.get_task(task_id)["status"] == "success"

    sid = gc.register_source_code(GREET_SOURCE, "greet")
    greeting = gc.run("fxbroker", endpoint_id=platform.endpoint_id, function_id=sid)
    assert _result(gc, greeting) == "hello fxbroker"

    bad = gc.run("boom", endpoint_id=platform.endpoint_id, function_id=gc.register_function(fail))

    def failed() -> bool:
        try:
            gc.get_result(bad)
        except TaskPending:
            return False
        except TaskExecutionFailed:
            return True
        return False

    wait_until(failed, timeout_s=DEADLINE_S)
    error = _raises(lambda: gc.get_result(bad), TaskExecutionFailed)
    assert "Traceback (most recent call last)" in str(error)
    assert "boom" in str(error)


def test_batch_of_100(platform: Platform, compute_env: None) -> None:
    gc = Client()
    fid = gc.register_function(square)
    batch = gc.create_batch()
    for x in range(100):
        batch.add(fid, args=(x,))
    answer = gc.batch_run(platform.endpoint_id, batch)
    task_ids = answer["tasks"][fid]
    assert len(set(task_ids)) == 100 and answer["endpoint_id"] == platform.endpoint_id
    results: dict[str, Any] = {}

    def all_done() -> bool:
        results.update(gc.get_batch_result(task_ids))
        return all(not results[t]["pending"] for t in task_ids if t in results) and len(
            results
        ) == len(task_ids)

    wait_until(all_done, timeout_s=DEADLINE_S)
    assert [results[t]["result"] for t in task_ids] == [x * x for x in range(100)]

    # An Executor attached to the group finds every task done: no result queue needed.
    with Executor(
        endpoint_id=platform.endpoint_id, client=gc, task_group_id=answer["task_group_id"]
    ) as ex:
        futures = list(ex.reload_tasks())
    assert [f.task_id for f in futures] == task_ids
    assert [f.result(timeout=0) for f in futures] == [x * x for x in range(100)]

    more = gc.create_batch(task_group_id=answer["task_group_id"])
    more.add(fid, args=(11,))
    again = gc.batch_run(platform.endpoint_id, more)
    assert again["task_group_id"] == answer["task_group_id"]
    assert _result(gc, again["tasks"][fid][0]) == 121


def test_function_and_endpoint_routes(platform: Platform, compute_env: None) -> None:
    gc = Client()
    gc.version_check()  # min_sdk_version: this SDK is new enough
    too_old = _raises(lambda: gc.version_check(endpoint_version="3.9.0"), VersionMismatch)
    assert "globus-compute-endpoint" in str(too_old)  # min_ep_version, read and compared

    fid = gc.register_function(_greet)
    described = gc.get_function(fid)
    assert described["function_uuid"] == fid and described["function_name"] == "_greet"
    status = gc.get_endpoint_status(platform.endpoint_id)
    assert status["status"] == "online" and status["details"]["total_workers"] == 2
    metadata = gc.get_endpoint_metadata(platform.endpoint_id)
    assert metadata["uuid"] == platform.endpoint_id
    assert platform.endpoint_id in {ep["uuid"] for ep in gc.get_endpoints()}

    name = f"gc-{uuid.uuid4().hex[:8]}"
    registered = gc.register_endpoint(name, None, allowed_functions=[fid])
    eid = registered["endpoint_id"]
    assert registered["credential"].startswith("fxep_")
    assert gc.register_endpoint(name, eid)["endpoint_id"] == eid
    allowed = gc.get_allowed_functions(eid)
    assert (allowed["restricted"], allowed["functions"]) == (True, [fid])
    refused = _raises(
        lambda: gc.run(1, endpoint_id=eid, function_id=gc.register_function(square)),
        ComputeAPIError,
    )
    assert isinstance(refused, ComputeAPIError)
    assert (refused.http_status, refused.code) == (403, "FUNCTION_NOT_ALLOWED")
    assert gc.stop_endpoint(eid)["endpoint_id"] == eid
    gc.delete_endpoint(eid)
    gone = _raises(lambda: gc.get_endpoint_metadata(eid), ComputeAPIError)
    assert isinstance(gone, ComputeAPIError) and gone.code == "ENDPOINT_NOT_FOUND"

    gc.delete_function(fid)
    deleted = _raises(
        lambda: gc.run("x", endpoint_id=platform.endpoint_id, function_id=fid), ComputeAPIError
    )
    assert isinstance(deleted, ComputeAPIError) and deleted.http_status == 410

    missing = _raises(lambda: gc.get_task(str(uuid.uuid4())), ComputeAPIError)
    assert isinstance(missing, ComputeAPIError)
    assert (missing.http_status, missing.code) == (404, "TASK_NOT_FOUND")
    assert missing.request_id

    no_amqp = _raises(gc.get_result_amqp_url, ComputeAPIError)
    assert isinstance(no_amqp, ComputeAPIError) and no_amqp.http_status == 404
    assert "FXBROKER_AMQP_URL" in no_amqp.message


def test_a_static_token_through_authorizer(platform: Platform, compute_env: None) -> None:
    gc = Client(authorizer=globus_sdk.AccessTokenAuthorizer(platform.token))
    fid = gc.register_function(square)
    assert _result(gc, gc.run(3, endpoint_id=platform.endpoint_id, function_id=fid)) == 9
    stranger = Client(authorizer=globus_sdk.AccessTokenAuthorizer("fxb_not-a-token"))
    refused = _raises(lambda: stranger.get_function(fid), ComputeAPIError)
    assert isinstance(refused, ComputeAPIError) and refused.http_status == 401


PAIR_SOURCE = 'def pair(kind):\n    return {"list": [1, "a"], "set": {1, 2}}[kind]\n'
JSON_DATA = "globus_compute_sdk.serialize.JSONData"
DILL_DATA = "globus_compute_sdk.serialize.DillDataBase64"


def test_result_serializers_choose_how_results_travel(
    platform: Platform, compute_env: None
) -> None:
    gc = Client()
    fid = gc.register_source_code(PAIR_SOURCE, "pair")
    json_only = gc.create_batch(result_serializers=[JSON_DATA])
    json_only.add(fid, args=("list",))
    json_only.add(fid, args=("set",))
    json_first = gc.create_batch(result_serializers=[JSON_DATA, DILL_DATA])
    json_first.add(fid, args=("set",))
    as_json, unfit = gc.batch_run(platform.endpoint_id, json_only)["tasks"][fid]
    (fallen_back,) = gc.batch_run(platform.endpoint_id, json_first)["tasks"][fid]

    assert _result(gc, as_json) == [1, "a"]
    assert gc._compute_web_client.v2.get_task(as_json)["result"] == '11\n[1, "a"]'
    assert _result(gc, fallen_back) == {1, 2}
    assert gc._compute_web_client.v2.get_task(fallen_back)["result"].startswith("00\n")

    def unfit_failed() -> bool:
        try:
            gc.get_result(unfit)
        except TaskPending:
            return False
        except TaskExecutionFailed:
            return True
        raise AssertionError("a set came back through JSONData")

    wait_until(unfit_failed, timeout_s=DEADLINE_S)
    error = _raises(lambda: gc.get_result(unfit), TaskExecutionFailed)
    assert "SerializationError" in str(error)
    assert "'11' (JSONData): TypeError: Object of type set is not JSON serializable" in str(error)


def test_a_shell_function_runs_through_client_run(platform: Platform, compute_env: None) -> None:
    gc = Client()
    fid = gc.register_function(ShellFunction("echo {greeting} from $0; exit 3"))
    result = _result(gc, gc.run(endpoint_id=platform.endpoint_id, function_id=fid, greeting="hi"))
    assert isinstance(result, ShellResult)
    assert (result.returncode, result.cmd) == (3, "echo hi from $0; exit 3")
    assert result.stdout == "hi from /bin/bash\n" and result.stderr == ""


def test_logout_revokes_the_token(platform: Platform, compute_env: None) -> None:
    gc = Client()
    assert platform.endpoint_id in {ep["uuid"] for ep in gc.get_endpoints()}
    assert gc.app is not None
    granted = gc.app.token_storage.get_token_data("funcx_service")
    assert granted is not None
    gc.logout()
    stale = Client(authorizer=globus_sdk.AccessTokenAuthorizer(granted.access_token))

    def refused() -> bool:  # within FXBROKER_AUTH_CACHE_S, as any revoked token
        try:
            stale.get_endpoints()
        except ComputeAPIError as exc:
            assert exc.http_status == 401, exc
            return True
        return False

    wait_until(refused, timeout_s=DEADLINE_S)
    assert platform.endpoint_id in {ep["uuid"] for ep in Client().get_endpoints()}


def _route_table() -> dict[tuple[str, str], list[str]]:
    """The module docstring's table: ``(method, path)`` to the keys of its tests."""
    lines = (__doc__ or "").splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("===")]
    starts = [m.start() for m in re.finditer("=+", lines[rules[0]])]
    rows: list[list[str]] = []
    for line in lines[rules[1] + 1 : rules[2]]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        if cells[0]:
            rows.append(cells)
        else:  # a cell continued on the next line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    table: dict[tuple[str, str], list[str]] = {}
    for route, sdk_method, tests in rows:
        method, path = route.split()
        assert sdk_method, route
        table[(method, path)] = [key.strip() for key in tests.split(",")]
    return table


def test_the_route_table_is_complete() -> None:
    served = {
        (method, re.sub(r"\{[^}]+\}", "{id}", route.path))
        for route in [*compute_v2.routes, *compute_v3.routes]
        for method in route.methods or ()
        if method != "HEAD"
    }
    table = _route_table()
    assert set(table) == served
    for keys in table.values():
        assert keys and set(keys) <= set(TABLE_TESTS), keys
    for dotted in TABLE_TESTS.values():
        module, name = dotted.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name)), dotted
