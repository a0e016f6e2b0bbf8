"""The rq engine: a real agent through the gateway hands its ``def`` tasks to two real
``rq worker`` processes on a Redis of the site's own (a private ``redis-server``, never the
platform's), and gets their outcomes back as the process engine would give them: results,
a raise with its remote traceback and output, rq's timeout as ``WalltimeExceeded``, a cancel
that stops the running job with rq's stop-job command, and a SIGTERM that hands the tasks in
flight back."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from endpoint_agent import Agent, AgentSettings, rq_job, run_agent
from endpoint_agent.engines import make_engine
from endpoint_agent.rq_engine import job_timeout
from endpoint_agent.worker import Call, Limits, Outcome
from sdk.states import TaskState
from service_common.errors import SettingsError
from tests.agent.gateway_stack import (
    GatewayEndpoint,
    assert_cancelled,
    assert_engine_run,
    publish_cancel,
    settings_for,
    until,
)
from tests.agent.helpers import EXIT, HOLD, LOUD, SLEEPY, SQUARE, Gate
from tests.engine_sites import RQ_QUEUE, RQ_WORKERS, rq_site
from tests.private_redis import PrivateRedis


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The site's own Redis and its two ``rq worker`` processes (:func:`rq_site`)."""
    with rq_site(tmp_path_factory.mktemp("rq-site")) as server:
        yield server


@pytest.fixture
async def site_redis(site: PrivateRedis) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(site.url)
    yield client
    client.close()


def rq_settings(endpoint: GatewayEndpoint, site: PrivateRedis, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "engine": "rq",
        "workers": RQ_WORKERS,
        "rq_redis_url": site.url,
        "rq_queue": RQ_QUEUE,
    }
    options.update(overrides)
    return settings_for(endpoint, **options)


async def test_a_thousand_tasks_a_raise_a_walltime_and_a_lost_work_horse(
    endpoint: GatewayEndpoint, site: PrivateRedis, site_redis: redis.Redis
) -> None:
    square = await endpoint.register(SQUARE)
    loud = await endpoint.register(LOUD)
    sleepy = await endpoint.register(SLEEPY)
    task_ids = await endpoint.submit_many(square, [((i,), {}) for i in range(1000)])
    raised = await endpoint.submit(loud, "no luck")
    too_long = await endpoint.submit(sleepy, 30, walltime_s="1")
    leave = await endpoint.register(EXIT)
    exited = await endpoint.submit(leave, 3)  # rq fails the job, with no callback of ours

    fences_before = set(site_redis.scan_iter("fxbroker:rq:*:fence"))
    async with Agent(rq_settings(endpoint, site, workers=4, drain_grace_s=0)) as agent:
        await asyncio.wait_for(agent.run(burst=True), timeout=120)

    # The engine's fence keeps no entry of a job that ended: it does not grow with the tasks.
    (fence,) = set(site_redis.scan_iter("fxbroker:rq:*:fence")) - fences_before
    assert site_redis.hkeys(fence) == [b"-"]

    await assert_engine_run(
        endpoint,
        task_ids,
        raised=raised,
        too_long=too_long,
        exited=exited,
        lost="ended failed in rq without an outcome",
    )


async def test_a_cancel_stops_the_running_job(
    endpoint: GatewayEndpoint, site: PrivateRedis, site_redis: redis.Redis, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    square = await endpoint.register(SQUARE)
    gate = Gate(endpoint)
    doomed = await endpoint.submit(hold, *gate.args(redis_url))

    async with Agent(rq_settings(endpoint, site)) as agent:
        running = asyncio.create_task(agent.run(burst=True))
        (horse_pid,) = await gate.wait_started()
        await publish_cancel(endpoint, doomed)
        await asyncio.wait_for(running, timeout=30)
        # rq's stop-job command killed the work-horse that ran it.
        await until(lambda: not alive(int(horse_pid)), "the work-horse to die")
        after = await endpoint.submit(square, 7)
        await asyncio.wait_for(agent.run(burst=True), timeout=30)

    await assert_cancelled(endpoint, doomed)
    assert await endpoint.result(after) == 49
    statuses = [
        site_redis.hget(k, "status") for k in site_redis.scan_iter("rq:job:*", _type="HASH")
    ]
    assert statuses.count(b"stopped") == 1, statuses
    await endpoint.assert_settled()


async def test_sigterm_hands_back_the_tasks_in_flight(
    endpoint: GatewayEndpoint, site: PrivateRedis, site_redis: redis.Redis, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(7)])
    # Three jobs in rq for two rq workers: one waits in rq's queue, three in the engine.
    settings = rq_settings(endpoint, site, workers=3, drain_grace_s=0)

    running = asyncio.create_task(run_agent(settings))
    pids = await gate.wait_started(RQ_WORKERS)  # both rq workers run one; the rest wait
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=30)

    for task_id in task_ids:
        fields = await endpoint.task(task_id)
        assert (fields["state"], fields.get("attempts", "0")) == (TaskState.WAITING, "0"), fields
    assert await endpoint.pending() == 0
    assert await endpoint.redis.xlen(endpoint.stream) == 7
    # The started jobs were stopped in rq, not left running.
    await until(lambda: not any(alive(int(pid)) for pid in pids), "the work-horses to die")
    assert site_redis.llen(f"rq:queue:{RQ_QUEUE}") == 0  # the queued ones were taken back

    async with Agent(settings_for(endpoint, engine="thread", workers=7)) as agent:
        again = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started(7)
        await gate.release(7)
        await asyncio.wait_for(again, timeout=30)
    for task_id in task_ids:
        assert await endpoint.result(task_id) is True
    await endpoint.assert_settled()


def test_walltimes_become_whole_seconds_of_rq_job_timeout() -> None:
    assert [job_timeout(w) for w in (None, 0.2, 1.0, 1.5, 600.0)] == [-1, 1, 1, 2, 600]


def test_a_call_crosses_rq_as_plain_values_and_comes_back_whole() -> None:
    limits = Limits(max_result_bytes=10, max_output_chars=20, result_strategies=("11",))
    call = Call("fn-1", SQUARE, "payload", frozenset({"st", "00"}), limits)
    args = rq_job.call_args("events", "fence", call)
    assert args == ("events", "fence", "fn-1", SQUARE, "payload", ["00", "st"], (10, 20, ["11"]))
    outcome = Outcome.success("11\n4")
    message = rq_job.encode("job-1", "outcome", outcome)
    assert rq_job.decode(message) == ("job-1", "outcome", outcome)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_stop_hands_back_what_has_not_started_and_lets_started_jobs_finish(
    endpoint: GatewayEndpoint, site: PrivateRedis, site_redis: redis.Redis, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(5)])
    settings = rq_settings(endpoint, site, workers=3, drain_grace_s=30)

    async with Agent(settings) as agent:
        running = asyncio.create_task(agent.run())
        await gate.wait_started(RQ_WORKERS)
        queue = f"rq:queue:{RQ_QUEUE}"
        assert site_redis.llen(queue) == 1  # the third job waits in rq for a worker
        agent.stop()
        # The job queued in rq is taken back at once (the two waiting in the engine too) ...
        await until(lambda: site_redis.llen(queue) == 0, "the queued job to be taken back")
        # ... while the two started jobs get the grace, and finish within it.
        await gate.release(RQ_WORKERS)
        await asyncio.wait_for(running, timeout=30)

    states = [(await endpoint.task(t))["state"] for t in task_ids]
    assert sorted(states) == sorted([TaskState.SUCCESS] * 2 + [TaskState.WAITING] * 3)
    for task_id, state in zip(task_ids, states, strict=True):
        if state == TaskState.SUCCESS:
            assert await endpoint.result(task_id) is True
    assert await endpoint.redis.xlen(endpoint.stream) == 3
    assert await endpoint.pending() == 0


def test_a_jobs_outcome_waits_out_a_restart_of_the_sites_redis(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis", appendfsync="no") as server:
        client = redis.Redis.from_url(server.url)
        try:
            server.stop()
            # The outage: the server is down when the push starts, and back a second later.
            back = threading.Thread(target=server.restart, kwargs={"down_s": 1.0})
            back.start()
            rq_job.push(client, "events", b"the outcome")
            back.join()
            assert client.lrange("events", 0, -1) == [b"the outcome"]
        finally:
            client.close()


def test_without_rq_installed_the_engine_is_a_configuration_mistake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rq", None)  # what an agent without rq finds
    monkeypatch.delitem(sys.modules, "endpoint_agent.rq_engine")
    settings = AgentSettings(
        endpoint_id="ep-1",
        ws_url="ws://127.0.0.1:1",
        credential="fxep_x",
        engine="rq",
        rq_redis_url="redis://127.0.0.1:1/0",
    )
    with pytest.raises(SettingsError, match=r"engine 'rq' needs the rq package.*fxbroker\[rq\]"):
        make_engine(settings)
