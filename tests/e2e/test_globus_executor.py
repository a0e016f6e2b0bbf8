"""The unmodified Globus Compute ``Executor`` against ``fxbroker web``/``ws``/``endpoint
start``/``amqp-publisher`` processes and the machine's RabbitMQ, configured by environment
variables only (see :mod:`tests.e2e.test_globus_compute`).

Beside the SDK, a *tap* (a queue of the test's own bound to the group's routing key) gets
a copy of every message the publisher sent for the group, so the test counts deliveries on
the broker's side too, not only what the SDK chose to show.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from globus_compute_common import messagepack
from globus_compute_sdk import Client, Executor, ShellFunction, ShellResult
from globus_compute_sdk.errors import TaskExecutionFailed, TaskPending
from globus_compute_sdk.sdk.executor import _RESULT_WATCHERS

from fxbroker.workload import fail, square
from sdk.keys import Keys
from sdk.messages import hash_field
from service_common.amqp import EXCHANGE, STREAM_ID_HEADER, ledger_name, queue_name
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.processes import FXBROKER
from tests.rabbitmq import amqp_url
from tests.redis_urls import sync_redis

__all__ = ["amqp_url"]

TASKS = 1000
DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def amqp_platform(
    redis_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    extra = {"FXBROKER_AMQP_URL": amqp_url}
    with running_platform(redis_url, tmp_path_factory.mktemp("amqp"), extra_env=extra) as p:
        yield p


class PublisherProcess:
    """``fxbroker amqp-publisher`` as a process the test stops, kills and starts again.

    A short lease (1 s) lets a copy started after a SIGKILL take the groups over soon; many
    small batches make a stop land in the middle of the publishing."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**env, "FXBROKER_AMQP_LEASE_MS": "1000", "FXBROKER_AMQP_BATCH_MAX": "20"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*FXBROKER, "amqp-publisher"], env=self.env, stdout=out, stderr=out
            )
        self.starts += 1

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture
def publisher(
    amqp_platform: Platform, group: tuple[str, Tap], tmp_path: Path
) -> Iterator[PublisherProcess]:
    """The publisher, stopped before the test's group goes (so nothing declares it again)."""
    process = PublisherProcess(amqp_platform.env, tmp_path / "publisher.log")
    process.start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def client_credentials(amqp_platform: Platform) -> tuple[str, str]:
    out = subprocess.run(
        [*FXBROKER, "user", "client-credentials", "e2e"],
        env=amqp_platform.env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    values = dict(line.split("=", 1) for line in out.split())
    return values["GLOBUS_COMPUTE_CLIENT_ID"], values["GLOBUS_COMPUTE_CLIENT_SECRET"]


@pytest.fixture
def compute_env(
    amqp_platform: Platform,
    client_credentials: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a user sets to point an unmodified script at fxbroker (and nothing else)."""
    client_id, secret = client_credentials
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLOBUS_SDK_ENVIRONMENT", "local")
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", f"{amqp_platform.url}/")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", client_id)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", secret)
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "gc"))
    monkeypatch.setenv("http_proxy", amqp_platform.url)
    monkeypatch.setenv("HTTP_PROXY", amqp_platform.url)


@dataclass
class Tap:
    """A copy of every message published for one task group (see the module docstring)."""

    channel: Any
    name: str

    def drain(self) -> list[tuple[str, str]]:
        """``(task id, stream id)`` of every message in the tap now, in queue order."""
        got = []
        for _ in range(100 * TASKS):
            method, props, body = self.channel.basic_get(self.name, auto_ack=True)
            if method is None:
                break
            got.append((str(messagepack.unpack(body).task_id), props.headers[STREAM_ID_HEADER]))
        return got


@pytest.fixture
def group(amqp_url: str, amqp_platform: Platform, redis_url: str) -> Iterator[tuple[str, Tap]]:
    """A fresh task group id with a tap on it; afterwards the group leaves the publisher's
    list and its queues and the tap are deleted (never the shared exchange)."""
    tg = str(uuid.uuid4())
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    tap = f"fxbroker-test-tap.{uuid.uuid4()}"
    channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_declare(tap, durable=False)
    channel.queue_bind(tap, EXCHANGE, routing_key=queue_name(tg))
    try:
        yield tg, Tap(channel, tap)
    finally:
        # That SDK keeps one result watcher per group beyond its Executors (until exit):
        # stop it before its queue goes.
        watcher = _RESULT_WATCHERS.get(uuid.UUID(tg))
        if watcher is not None:
            watcher.shutdown(wait=True)
        del watcher
        # Its pika I/O loop never closes its wake-up socket pair: collect it here, where
        # that known leak of that SDK is not taken for one of ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        registry = sync_redis(redis_url)
        try:
            registry.zrem(Keys(amqp_platform.env["FXBROKER_KEY_PREFIX"]).amqp_groups(), tg)
        finally:
            registry.close()
        for name in (tap, queue_name(tg), ledger_name(tg)):
            channel.queue_delete(name)
        connection.close()


@contextlib.contextmanager
def compute_client() -> Iterator[Client]:
    """A ``Client()`` whose HTTP sessions are closed on leaving (else the garbage collector
    finds them open, and warnings are errors here)."""
    client = Client()
    try:
        yield client
    finally:
        client._compute_web_client.v2.close()
        client._compute_web_client.v3.close()
        client.app.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.05)


def _assert_once_in_order(delivered: list[tuple[str, str]], task_ids: list[str]) -> None:
    counts = Counter(task_id for task_id, _ in delivered)
    repeated = {task_id: n for task_id, n in counts.items() if n > 1}
    assert not repeated, f"published more than once: {repeated}"
    assert set(counts) == set(task_ids)
    stream_ids = [tuple(map(int, entry.split("-"))) for _, entry in delivered]
    assert stream_ids == sorted(stream_ids), "not in completion order"


def test_an_executor_gets_every_result_and_a_remote_exception(
    amqp_platform: Platform,
    compute_env: None,
    publisher: PublisherProcess,
    group: tuple[str, Tap],
) -> None:
    tg, tap = group
    with (
        compute_client() as client,
        Executor(
            endpoint_id=amqp_platform.endpoint_id, client=client, task_group_id=tg, batch_size=500
        ) as ex,
    ):
        futures = [ex.submit(square, x) for x in range(TASKS)]
        broken = ex.submit(fail, 7)
        assert [f.result(timeout=DEADLINE_S) for f in futures] == [x * x for x in range(TASKS)]
        error = broken.exception(timeout=DEADLINE_S)
    assert isinstance(error, TaskExecutionFailed)
    assert "Traceback (most recent call last)" in str(error)
    assert "ValueError: cannot handle 7" in str(error)
    _assert_once_in_order(tap.drain(), [f.task_id for f in [*futures, broken]])


def test_the_publisher_stopped_and_killed_mid_run_loses_and_repeats_nothing(
    amqp_platform: Platform,
    compute_env: None,
    publisher: PublisherProcess,
    group: tuple[str, Tap],
) -> None:
    """SIGTERM at a quarter of the results, SIGKILL at half; each time a new copy starts."""
    tg, tap = group
    with (
        compute_client() as client,
        Executor(
            endpoint_id=amqp_platform.endpoint_id, client=client, task_group_id=tg, batch_size=500
        ) as ex,
    ):
        futures = [ex.submit(square, x) for x in range(TASKS)]

        def done(n: int) -> Callable[[], bool]:
            return lambda: sum(f.done() for f in futures) >= n

        wait_until(done(TASKS // 4), "a quarter of the results")
        assert publisher.stop(signal.SIGTERM) == 0
        publisher.start()
        wait_until(done(TASKS // 2), "half of the results")
        assert publisher.stop(signal.SIGKILL) == -signal.SIGKILL
        publisher.start()
        assert [f.result(timeout=DEADLINE_S) for f in futures] == [x * x for x in range(TASKS)]
    delivered = tap.drain()
    _assert_once_in_order(delivered, [f.task_id for f in futures])
    assert len(delivered) == TASKS
    assert publisher.starts == 3


def test_the_sdk_shows_a_repeated_result_once(
    amqp_platform: Platform,
    compute_env: None,
    publisher: PublisherProcess,
    group: tuple[str, Tap],
    amqp_url: str,
) -> None:
    """The repeats the publisher cannot rule out (see :mod:`amqp_publisher.publisher`): that
    SDK's watcher takes a result for a future already done and never surfaces it."""
    tg, tap = group
    with (
        compute_client() as client,
        Executor(endpoint_id=amqp_platform.endpoint_id, client=client, task_group_id=tg) as ex,
    ):
        first = ex.submit(square, 3)
        assert first.result(timeout=DEADLINE_S) == 9
        ((task_id, entry),) = tap.drain()
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            body = messagepack.pack(
                messagepack.message_types.Result(task_id=task_id, data="00\ngARLZC4=\n")
            )  # the same task, another value: a repeat must not overwrite the first
            properties = pika.BasicProperties(
                delivery_mode=2, message_id=task_id, headers={STREAM_ID_HEADER: entry}
            )
            connection.channel().basic_publish(EXCHANGE, queue_name(tg), body, properties)
        finally:
            connection.close()
        second = ex.submit(square, 4)
        assert second.result(timeout=DEADLINE_S) == 16
        assert first.result() == 9
    wait_until(lambda: _ready(amqp_url, queue_name(tg)) == 0, "the repeat consumed")


def _ready(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


def test_an_executor_runs_shell_functions_and_honours_result_serializers(
    amqp_platform: Platform,
    compute_env: None,
    publisher: PublisherProcess,
    group: tuple[str, Tap],
    redis_url: str,
) -> None:
    tg, tap = group
    echo = ShellFunction("echo {word}; echo {word} >&2; exit {code}")
    with (
        compute_client() as client,
        Executor(endpoint_id=amqp_platform.endpoint_id, client=client, task_group_id=tg) as ex,
    ):
        shells = [ex.submit(echo, word=f"w{n}", code=n) for n in range(5)]
        ex.result_serializers = ["globus_compute_sdk.serialize.JSONData"]
        squares = [ex.submit(square, x) for x in range(5)]
        unfit = ex.submit(echo, word="json", code=0)  # a ShellResult is no JSON
        results = [f.result(timeout=DEADLINE_S) for f in shells]
        assert [f.result(timeout=DEADLINE_S) for f in squares] == [x * x for x in range(5)]
        error = unfit.exception(timeout=DEADLINE_S)
    for n, result in enumerate(results):
        assert isinstance(result, ShellResult)
        assert (result.returncode, result.stdout, result.stderr) == (n, f"w{n}\n", f"w{n}\n")
    assert isinstance(error, TaskExecutionFailed)
    assert "'11' (JSONData): TypeError: Object of type ShellResult is not JSON" in str(error)
    keys = Keys(amqp_platform.env["FXBROKER_KEY_PREFIX"])
    stored = sync_redis(redis_url, decode_responses=True)
    try:
        wire = [stored.hget(keys.task(f.task_id), hash_field("result")) for f in squares]
    finally:
        stored.close()
    assert wire == [f"11\n{x * x}" for x in range(5)]
    _assert_once_in_order(tap.drain(), [f.task_id for f in [*shells, *squares, unfit]])


GATE_SOURCE = """\
def gate(path):
    import os, time
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return path
"""
"""A task that runs until the test creates ``path`` (so it is surely still running when the
test wants it so), registered as source through ``Client.register_source_code``."""

FIRST_SCRIPT = """\
import json, os, sys, time
from globus_compute_sdk import Executor
from fxbroker.workload import fail, square

endpoint_id, task_group_id, gate_id, gate_path, count, out = sys.argv[1:]
ex = Executor(endpoint_id=endpoint_id, task_group_id=task_group_id)
futures = [ex.submit(square, x) for x in range(int(count))]
futures.append(ex.submit(fail, 7))
futures.append(ex.submit_to_registered_function(gate_id, args=(gate_path,)))
deadline = time.monotonic() + 60
while not all(f.task_id for f in futures):
    assert time.monotonic() < deadline, "the tasks were not submitted within 60 s"
    time.sleep(0.05)
with open(out + ".part", "w") as f:
    json.dump([f.task_id for f in futures], f)
os.rename(out + ".part", out)
sys.stdin.read()  # until the test kills this script
"""
"""A user's first script: submits squares, a failure and a gated task into a task group, writes
the task ids and waits to be killed (SIGKILL: its AMQP consumer goes without a goodbye)."""

RELOADED = 50


def _submitted_by_a_script_killed_after(
    env: dict[str, str], args: list[str], tmp_path: Path
) -> list[str]:
    """Run :data:`FIRST_SCRIPT` in a process of its own; kill it once its tasks are in."""
    out, log = tmp_path / "task_ids.json", tmp_path / "first_script.log"
    with log.open("wb") as err:
        script = subprocess.Popen(
            [sys.executable, "-c", FIRST_SCRIPT, *args, str(out)],
            env=env, stdin=subprocess.PIPE, stdout=err, stderr=err,
        )  # fmt: skip
    try:
        wait_until(lambda: out.exists() or script.poll() is not None, "the first script's tasks")
        assert out.exists(), log.read_text()[-2000:]
    finally:
        script.kill()
        script.wait(30)
        assert script.stdin is not None
        script.stdin.close()
    task_ids: list[str] = json.loads(out.read_text())
    return task_ids


def test_a_new_executor_reloads_the_task_group(
    amqp_platform: Platform,
    compute_env: None,
    publisher: PublisherProcess,
    group: tuple[str, Tap],
    tmp_path: Path,
) -> None:
    """A first script submits into a task group and dies; a new ``Executor`` attached to the
    group gets, from ``reload_tasks()``, a future for every task: those done before the reload
    already done (``GET /v2/taskgroup/{id}``, ``POST /v2/batch_status``), the one still running
    resolved later over AMQP."""
    tg, tap = group
    gate_path = tmp_path / "gate-open"
    with compute_client() as client:
        gate_id = client.register_source_code(GATE_SOURCE, "gate")
        args = [amqp_platform.endpoint_id, tg, gate_id, str(gate_path), str(RELOADED)]
        task_ids = _submitted_by_a_script_killed_after(dict(os.environ), args, tmp_path)
        *squares, failed, gated = task_ids
        assert len(squares) == RELOADED

        def finished_before_the_reload() -> bool:
            answers = client.get_batch_result(squares)
            if not all(not answers.get(t, {"pending": True})["pending"] for t in squares):
                return False
            try:
                client.get_result(failed)
            except TaskPending:
                return False
            except TaskExecutionFailed:
                return True
            raise AssertionError("the failing task succeeded")

        wait_until(finished_before_the_reload, "the squares and the failure")
        with Executor(  # batch_size: reload_tasks asks batch_status 16 tasks at a time
            endpoint_id=amqp_platform.endpoint_id, client=client, task_group_id=tg, batch_size=16
        ) as ex:
            futures = {f.task_id: f for f in ex.reload_tasks()}
            assert set(futures) == set(task_ids)
            assert all(futures[t].done() for t in [*squares, failed])
            assert not futures[gated].done()
            gate_path.touch()
            assert futures[gated].result(timeout=DEADLINE_S) == str(gate_path)
    assert [futures[t].result() for t in squares] == [x * x for x in range(RELOADED)]
    error = futures[failed].exception()
    assert isinstance(error, TaskExecutionFailed)
    assert "Traceback (most recent call last)" in str(error)
    assert "ValueError: cannot handle 7" in str(error)
    _assert_once_in_order(tap.drain(), task_ids)
