"""The seed example: 50 tasks that each sleep 1 s, through the Executor, with enough workers,
finish in one round of work (all 50 running at once), not fifty, and leave in few requests.

Asserted without timing: every task started before any finished, and the web service counted
the submit requests."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from fxbroker import Client, Executor
from tests.sdk.stack import Runner, Services, Stack, threaded
from tests.sdk.workload import nap

TASKS = 50
TIMEOUT_S = 60
SUBMIT = re.compile(
    r'^fxbroker_http_requests_total\{[^}]*route="/v1/endpoints/\{endpoint_id\}/submit"[^}]*\}'
    r" (?P<count>[0-9.]+)$",
    re.MULTILINE,
)


@pytest.fixture
def platform(
    database_url: str, redis_url: str, key_prefix: str
) -> Iterator[tuple[Services, Stack, Runner]]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack, serve=False) as (services, runner):
        runner.call(stack.serve(services.endpoint_id, workers=64))
        yield services, stack, runner


def submit_requests(url: str) -> int:
    text = httpx.get(f"{url}/metrics").text
    return sum(int(float(m["count"])) for m in SUBMIT.finditer(text))


def test_fifty_one_second_tasks_run_in_one_round(
    platform: tuple[Services, Stack, Runner],
) -> None:
    s = platform[0]
    with Client(s.url, s.token, ws_url=s.ws_url) as client:
        before = submit_requests(s.url)
        with Executor(s.endpoint_id, client=client) as ex:
            futures = [ex.submit(nap, 1.0) for _ in range(TASKS)]
            assert [f.result(TIMEOUT_S) for f in futures] == [1.0] * TASKS
            sent = ex.submit_requests
        requests = submit_requests(s.url) - before
        assert requests == sent
        assert 1 <= requests <= 5, f"{TASKS} submits took {requests} requests"

        infos = client.get_tasks([f.task_id or "" for f in futures])
        started = [info["started_at"] or 0.0 for info in infos.values()]
        completed = [info["completed_at"] or 0.0 for info in infos.values()]
        assert all(started) and all(completed)
        assert max(started) < min(completed)  # all fifty were running at the same time
