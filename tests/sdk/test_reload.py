"""A client process killed mid-work (SIGKILL) and a new one reattached to its task group with
``Executor(task_group_id=...).reload_tasks()`` gets every result."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fxbroker import Client, Executor
from tests.sdk.stack import Runner, Services, Stack, threaded

TIMEOUT_S = 60
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def platform(
    database_url: str, redis_url: str, key_prefix: str
) -> Iterator[tuple[Services, Stack, Runner]]:
    stack = Stack(database_url=database_url, redis_url=redis_url, key_prefix=key_prefix)
    with threaded(stack, serve=False) as (services, runner):
        yield services, stack, runner


def test_a_killed_client_is_reloaded_from_its_task_group(
    platform: tuple[Services, Stack, Runner],
) -> None:
    s, stack, runner = platform
    with Client(s.url, s.token, ws_url=s.ws_url) as client:
        later, credential = client.register_endpoint_with_credential("later")
        assert credential is not None
        stack.credentials[later] = credential  # for the agent that serves it below
        with subprocess.Popen(
            [sys.executable, "-m", "tests.sdk.crashing_client",
             s.url, s.token, s.ws_url, s.idle_endpoint_id, later],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        ) as child:  # fmt: skip
            try:
                assert child.stdout is not None
                report = json.loads(child.stdout.readline())
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(TIMEOUT_S)
        assert child.returncode == -signal.SIGKILL
        group, task_ids = report["task_group_id"], report["task_ids"]
        assert len(task_ids) == 15

        runner.call(stack.burst(s.idle_endpoint_id))  # the first ten finish after the crash
        with Executor(later, client=client, task_group_id=group) as ex:
            futures = ex.reload_tasks()
            assert [f.task_id for f in futures] == task_ids
            finished, running = futures[:10], futures[10:]
            assert all(f.done() for f in finished)  # resolved before reload_tasks returned
            assert [f.result() for f in finished] == [i * i for i in range(10)]
            assert not any(f.done() for f in running)
            assert ex.reload_tasks() == futures  # the same futures again

            runner.call(stack.burst(later))  # the last five finish now: pushed to the futures
            assert [f.result(TIMEOUT_S) for f in running] == [i * i for i in range(10, 15)]
