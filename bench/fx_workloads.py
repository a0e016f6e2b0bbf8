"""The fxbroker side of every workload, measured from a client process through the public SDK.

Each function runs one sample and records it in :class:`~bench.report.Figures`. Every
sample starts with a warm-up round trip (connections open, function registered, agent
online) outside the clock; every wait is bounded by ``task_timeout_s``; every task's outcome
is checked, so a figure is never made of failures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from bench import tasks
from bench.platform import Deployment
from bench.redis_admin import open_redis, used_memory
from bench.report import (
    ASYNC_PUSH_ROW,
    FXBROKER,
    LONG_POLL_ROW,
    PAYLOAD_ROW,
    Figures,
    percentile,
)
from bench.settings import BenchSettings
from fxbroker import AsyncClient, Batch, Executor
from sdk.keys import Keys

PROCESS = "bench-process"
THREAD = "bench-thread"
PREFETCH = "bench-process-prefetch"
PREFETCH_TASKS = 8
"""The prefetch of the PREFETCH agent (an opt-in setting; the other agents use the default 0)."""
SEED = "bench-seed"
IDLE = "bench-idle"
WIDE = "bench-wide"
WIDE_SLOTS = 10_000
"""The async slots (``max_concurrency``) of the WIDE agent, which runs the second async row."""


def _check_all_succeeded(results: dict[str, dict[str, Any]]) -> None:
    failed = [t for t, entry in results.items() if "exception" in entry]
    if failed:
        raise RuntimeError(f"{len(failed)} tasks failed, e.g. {results[failed[0]]['exception']}")


def executor_wall(
    deployment: Deployment,
    endpoint: str,
    fn: Callable[..., object],
    n: int,
    s: BenchSettings,
    *,
    args: tuple[object, ...] = (),
    expect: object = None,
    meter: AbstractContextManager[object] | None = None,
) -> float:
    """Seconds from the first ``submit`` until every future of ``n`` calls ``fn(*args)`` is done.

    Every result must equal ``expect`` (the no-op's and the sleeps' ``None``, the echo's
    argument). ``meter`` is entered just around the clocked span (after the warm-up, before
    the results are checked), so a caller can measure what else it costs
    (:mod:`bench.hop_cost`).
    """
    with deployment.client() as client, Executor(deployment.endpoints[endpoint], client) as ex:
        ex.submit(tasks.noop).result(timeout=s.task_timeout_s)  # warm-up
        with meter or contextlib.nullcontext():
            start = time.perf_counter()
            futures = [ex.submit(fn, *args) for _ in range(n)]
            done, pending = concurrent.futures.wait(futures, timeout=s.task_timeout_s)
            wall = time.perf_counter() - start
        if pending:
            raise TimeoutError(f"{len(pending)} of {n} tasks unfinished after the timeout")
        wrong = sum(1 for future in done if future.result() != expect)
        if wrong:
            raise RuntimeError(f"{wrong} of {n} tasks did not return what was expected")
    return wall


def throughput_executor(
    figures: Figures, deployment: Deployment, endpoint: str, variant: str, s: BenchSettings
) -> None:
    n = s.throughput_tasks
    wall = executor_wall(deployment, endpoint, tasks.noop, n, s)
    figures.add("throughput", FXBROKER, variant, "throughput", n / wall,
                unit="tasks/s", better="higher")  # fmt: skip


def throughput_polling(
    figures: Figures, deployment: Deployment, endpoint: str, variant: str, s: BenchSettings
) -> None:
    """``batch_run`` (one request per 10,000 tasks) then ``Client.wait`` polling."""
    n = s.throughput_tasks
    endpoint_id = deployment.endpoints[endpoint]
    with deployment.client() as client:
        fid = client.register_function(tasks.noop)
        client.wait([client.run(function_id=fid, endpoint_id=endpoint_id)],
                    timeout_s=s.task_timeout_s, poll_s=s.poll_interval_s)  # fmt: skip
        start = time.perf_counter()
        ids: list[str] = []
        for first in range(0, n, 10_000):
            batch = client.create_batch()
            for _ in range(min(10_000, n - first)):
                batch.add(fid)
            ids += client.batch_run(endpoint_id, batch)
        results = client.wait(ids, timeout_s=s.task_timeout_s, poll_s=s.poll_interval_s)
        wall = time.perf_counter() - start
    _check_all_succeeded(results)
    figures.add("throughput", FXBROKER, variant, "throughput", n / wall,
                unit="tasks/s", better="higher")  # fmt: skip


def throughput_async(
    figures: Figures, deployment: Deployment, endpoint: str, variant: str, s: BenchSettings
) -> None:
    """One ``AsyncClient`` gathering ``run`` of every task at once, results pushed."""
    n = s.throughput_tasks

    async def measure() -> float:
        async with AsyncClient(deployment.url, deployment.token, ws_url=deployment.ws_url,
                               endpoint_id=deployment.endpoints[endpoint]) as fx:  # fmt: skip
            fid = await fx.register_function(tasks.noop)
            await asyncio.wait_for(fx.run(function_id=fid), s.task_timeout_s)  # warm-up
            start = time.perf_counter()
            runs = [fx.run(function_id=fid) for _ in range(n)]
            await asyncio.wait_for(asyncio.gather(*runs), s.task_timeout_s)
            return time.perf_counter() - start

    figures.add("throughput", FXBROKER, variant, "throughput", n / asyncio.run(measure()),
                unit="tasks/s", better="higher")  # fmt: skip


def _add_latency(figures: Figures, variant: str, samples_s: list[float]) -> None:
    ms = [x * 1000 for x in samples_s]
    figures.add("latency", FXBROKER, variant, "p50", percentile(ms, 50), unit="ms",
                better="lower")  # fmt: skip
    figures.add("latency", FXBROKER, variant, "p99", percentile(ms, 99), unit="ms",
                better="lower")  # fmt: skip


def async_round_trips(
    deployment: Deployment, endpoint: str, n: int, s: BenchSettings
) -> list[float]:
    """Seconds of each of ``n`` sequential ``await fx.run(...)`` of the no-op on ``endpoint``
    (submit, then the result pushed over the WebSocket), after one warm-up."""

    async def measure() -> list[float]:
        async with AsyncClient(deployment.url, deployment.token, ws_url=deployment.ws_url,
                               endpoint_id=deployment.endpoints[endpoint]) as fx:  # fmt: skip
            fid = await fx.register_function(tasks.noop)
            await asyncio.wait_for(fx.run(function_id=fid), s.task_timeout_s)
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                await asyncio.wait_for(fx.run(function_id=fid), s.task_timeout_s)
                samples.append(time.perf_counter() - start)
            return samples

    return asyncio.run(measure())


def latency_async(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """Sequential ``await fx.run(...)`` on the process agent: submit, then the result
    pushed over the WebSocket."""
    samples = async_round_trips(deployment, PROCESS, s.latency_round_trips, s)
    _add_latency(figures, ASYNC_PUSH_ROW, samples)


def latency_polling(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """Sequential ``Client.run`` then ``Client.wait``, whose request is a long poll the
    service answers when the result exists (``poll_s`` only paces a service that does not)."""
    endpoint_id = deployment.endpoints[PROCESS]
    samples = []
    with deployment.client() as client:
        fid = client.register_function(tasks.noop)
        for i in range(s.latency_round_trips + 1):
            start = time.perf_counter()
            tid = client.run(function_id=fid, endpoint_id=endpoint_id)
            result = client.wait([tid], timeout_s=s.task_timeout_s, poll_s=s.poll_interval_s)
            if i:  # the first is the warm-up
                samples.append(time.perf_counter() - start)
            _check_all_succeeded(result)
    _add_latency(figures, LONG_POLL_ROW, samples)


def seed(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """The seed's batching example: tasks that sleep 1 s each, through the Executor."""
    wall = executor_wall(deployment, SEED, tasks.sleep_1s, s.seed_tasks, s)
    variant = f"Executor, thread x{s.seed_workers}"
    figures.add("seed", FXBROKER, variant, "wall", wall, unit="s", better="lower")


def async_wall(
    deployment: Deployment,
    endpoint: str,
    n: int,
    s: BenchSettings,
    *,
    meter: AbstractContextManager[object] | None = None,
) -> float:
    """Seconds until ``n`` ``async def`` tasks each awaiting ``asyncio.sleep(1)``, all
    gathered at once, have returned; ``meter`` as in :func:`executor_wall`."""

    async def measure() -> float:
        async with AsyncClient(deployment.url, deployment.token, ws_url=deployment.ws_url,
                               endpoint_id=deployment.endpoints[endpoint]) as fx:  # fmt: skip
            await asyncio.wait_for(fx.run(function_id=await fx.register_function(tasks.noop)),
                                   s.task_timeout_s)  # fmt: skip
            fid = await fx.register_function(tasks.async_sleep_1s)
            with meter or contextlib.nullcontext():
                start = time.perf_counter()
                runs = [fx.run(function_id=fid) for _ in range(n)]
                await asyncio.wait_for(asyncio.gather(*runs), s.task_timeout_s)
                return time.perf_counter() - start

    return asyncio.run(measure())


def async_concurrency(
    figures: Figures, deployment: Deployment, endpoint: str, n: int, variant: str, s: BenchSettings
) -> None:
    """``n`` ``async def`` tasks each awaiting ``asyncio.sleep(1)``, all gathered at once."""
    figures.add("async", FXBROKER, variant, "wall", async_wall(deployment, endpoint, n, s),
                unit="s", better="lower")  # fmt: skip


def submission(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """Tasks submitted in batches to an endpoint no agent serves: accepted per second and
    Redis memory per queued task (``used_memory`` delta). The batches are built before the
    clock starts; the queued tasks are deleted afterwards."""
    endpoint_id = deployment.endpoints[IDLE]
    keys = Keys(deployment.key_prefix)
    with deployment.client() as client:
        fid = client.register_function(tasks.noop)
        client.run(function_id=fid, endpoint_id=endpoint_id)  # warm-up; makes the group
        batches: list[Batch] = []
        for first in range(0, s.submission_tasks, s.submission_batch):
            batch = client.create_batch()
            for _ in range(min(s.submission_batch, s.submission_tasks - first)):
                batch.add(fid)
            batches.append(batch)
        before = used_memory(deployment.redis_url)
        start = time.perf_counter()
        ids: list[str] = []
        for batch in batches:
            ids += client.batch_run(endpoint_id, batch)
        wall = time.perf_counter() - start
        after = used_memory(deployment.redis_url)
        group = client.task_group_id
    parts = _memory_parts(deployment, keys, endpoint_id, group, ids)
    _delete_queued(deployment, keys, endpoint_id, group, ids)
    variant = "Client.batch_run"
    figures.add("submission", FXBROKER, variant, "accepted", len(ids) / wall, unit="tasks/s",
                better="higher")  # fmt: skip
    total = (after - before) / len(ids)
    figures.add("submission", FXBROKER, variant, "memory", total, unit="bytes/task",
                better="lower")  # fmt: skip
    parts["rest"] = total - sum(parts.values())
    for part, size in parts.items():
        figures.add("submission", FXBROKER, variant, f"memory: {part}", size, unit="bytes/task",
                    better="lower")  # fmt: skip


MEMORY_SAMPLE = 200
"""Task hashes whose ``MEMORY USAGE`` is averaged for the per-part figures."""


def _memory_parts(
    deployment: Deployment, keys: Keys, endpoint_id: str, group: str | None, ids: list[str]
) -> dict[str, float]:
    """Where a queued task's bytes go, from ``MEMORY USAGE`` (which counts a key's name, its
    dictionary entry and its value, each as allocated): the task hash (the mean of a sample),
    the endpoint stream's bytes and the group list's bytes per task. The rest of ``used_memory``
    growth is the keyspace table and allocator slack."""
    client = open_redis(deployment.redis_url)
    try:
        step = max(1, len(ids) // MEMORY_SAMPLE)
        sample = [client.memory_usage(keys.task(t)) or 0 for t in ids[::step]]
        stream = client.memory_usage(keys.endpoint_tasks(endpoint_id), samples=0) or 0
        listed = (
            0 if group is None else client.memory_usage(keys.task_group_tasks(group), samples=0)
        )
    finally:
        client.close()
    n = len(ids)
    return {"task hash": sum(sample) / len(sample), "stream entry": stream / n,
            "group list": (listed or 0) / n}  # fmt: skip


def _delete_queued(
    deployment: Deployment, keys: Keys, endpoint_id: str, group: str | None, ids: list[str]
) -> None:
    client = open_redis(deployment.redis_url)  # a cluster client splits UNLINK by slot
    try:
        for first in range(0, len(ids), 1000):
            client.unlink(*(keys.task(t) for t in ids[first : first + 1000]))
        client.unlink(keys.endpoint_tasks(endpoint_id))
        if group is not None:
            client.unlink(keys.task_group_tasks(group))
    finally:
        client.close()


def fanout_wall(
    deployment: Deployment,
    s: BenchSettings,
    *,
    meter: AbstractContextManager[object] | None = None,
) -> tuple[float, list[float]]:
    """Many AsyncClients at once, each with its own task group and WebSocket, each awaiting
    its results: seconds for all, and every task's submit-to-result seconds; ``meter`` as in
    :func:`executor_wall` (the clients are made and the function registered before it)."""

    async def one(fx: AsyncClient, fid: str) -> list[float]:
        async def timed() -> float:
            start = time.perf_counter()
            await fx.run(function_id=fid)
            return time.perf_counter() - start

        return list(await asyncio.gather(*(timed() for _ in range(s.fanout_results))))

    async def measure() -> tuple[float, list[float]]:
        clients = [
            AsyncClient(deployment.url, deployment.token, ws_url=deployment.ws_url,
                        endpoint_id=deployment.endpoints[PROCESS])
            for _ in range(s.fanout_clients)
        ]  # fmt: skip
        try:
            fid = await clients[0].register_function(tasks.noop)
            await asyncio.wait_for(clients[0].run(function_id=fid), s.task_timeout_s)
            with meter or contextlib.nullcontext():
                start = time.perf_counter()
                per_client = await asyncio.wait_for(
                    asyncio.gather(*(one(fx, fid) for fx in clients)), s.task_timeout_s
                )
                wall = time.perf_counter() - start
        finally:
            await asyncio.gather(*(fx.aclose() for fx in clients), return_exceptions=True)
        return wall, [x for xs in per_client for x in xs]

    return asyncio.run(measure())


def fanout(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """The fan-out row: :func:`fanout_wall`'s wall, and the p99 of its tasks' times."""
    wall, latencies = fanout_wall(deployment, s)
    variant = f"{s.fanout_clients} AsyncClients x {s.fanout_results}"
    figures.add("fan-out", FXBROKER, variant, "wall", wall, unit="s", better="lower")
    figures.add("fan-out", FXBROKER, variant, "p99", percentile([x * 1000 for x in latencies], 99),
                unit="ms", better="lower")  # fmt: skip


def payload_megabytes(s: BenchSettings) -> float:
    """MB (10^6 bytes) one payload sample moves: every argument in and every result out."""
    return s.payload_tasks * 2 * s.payload_bytes / 1e6


def payload(figures: Figures, deployment: Deployment, s: BenchSettings) -> None:
    """Tasks that each take ``payload_bytes`` of random bytes and return them, through the
    Executor on the process agent: MB/s of arguments and results together."""
    data = os.urandom(s.payload_bytes)  # random, so no compression on the way helps
    wall = executor_wall(deployment, PROCESS, tasks.echo, s.payload_tasks, s, args=(data,),
                         expect=data)  # fmt: skip
    figures.add("payload", FXBROKER, PAYLOAD_ROW, "throughput", payload_megabytes(s) / wall,
                unit="MB/s", better="higher")  # fmt: skip
