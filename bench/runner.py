"""One benchmark run: start the systems, run every workload interleaved, report.

Layout (a real deployment on one machine): Redis is ``REDIS_URL``, a private
``redis-server`` or a private Redis Cluster (``--redis-cluster``; on a cluster the peers run on
a private ``redis-server`` of their own, as none of them speaks to a cluster); fxbroker runs as
separate processes (``fxbroker web``, ``fxbroker ws`` and one ``fxbroker endpoint start`` agent
per endpoint); each peer's workers run as subprocesses started for its turn; the clients of
every system run in this process, except ``fxbroker demo``, which runs as a user runs it, a
subprocess with its own stack. The engine rows add an agent of the ``rq`` and one of the
``parsl`` engine, and what they hand tasks to (:mod:`bench.engines`). Each repeat runs every
step once, the order rotated by one from repeat to repeat, so no system always goes first or
last; the figures are the medians over the repeats. Before Redis stops, the run counts the keys
of its tag left on every primary (``keys_left`` in the JSON; 0 when every part cleaned up).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import demo_run, engines
from bench import fx_workloads as fx
from bench.peer_arq import ArqPeer
from bench.peer_celery import CeleryPeer
from bench.peer_rq import RqPeer
from bench.peers import Peer, PoolPeer
from bench.platform import AgentSpec, Deployment, Platform
from bench.redis_admin import count_matching
from bench.report import (
    ASYNC_ROW,
    ASYNC_WIDE_ROW,
    Figures,
    percentile,
    render,
    targets,
    to_json,
    write_json,
)
from bench.services import Processes, RedisServer
from bench.settings import BenchSettings
from service_common.redis_client import is_cluster_url

PEERS_APART = "a private redis-server (single)"
"""Where Celery, RQ and arq run when fxbroker's Redis is a cluster: none of them speaks to a
Redis Cluster."""
PACKAGES = ("fxbroker", "celery", "rq", "arq", "redis", "hiredis")
WORKLOADS = ("throughput", "latency", "seed", "async", "submission", "fan-out", "payload", "demo",
             "peers", "engines")  # fmt: skip


@dataclass(frozen=True)
class Step:
    workload: str
    name: str
    run: Callable[[], None]


PREFETCH_ROW = f"Executor, process x2, prefetch {fx.PREFETCH_TASKS}"


def _fx_steps(figures: Figures, d: Deployment, s: BenchSettings, workdir: Path) -> list[Step]:
    return [
        Step("throughput", "fxbroker Executor, process x2", lambda: fx.throughput_executor(
            figures, d, fx.PROCESS, "Executor, process x2", s)),
        Step("throughput", "fxbroker Executor, thread x2", lambda: fx.throughput_executor(
            figures, d, fx.THREAD, "Executor, thread x2", s)),
        Step("throughput", "fxbroker Executor, process x2, prefetch", lambda: (
            fx.throughput_executor(figures, d, fx.PREFETCH, PREFETCH_ROW, s))),
        Step("throughput", "fxbroker batch_run+poll, process x2", lambda: fx.throughput_polling(
            figures, d, fx.PROCESS, "batch_run + polling, process x2", s)),
        Step("throughput", "fxbroker batch_run+poll, thread x2", lambda: fx.throughput_polling(
            figures, d, fx.THREAD, "batch_run + polling, thread x2", s)),
        Step("throughput", "fxbroker AsyncClient gather, process x2", lambda: (
            fx.throughput_async(figures, d, fx.PROCESS, "AsyncClient gather, process x2", s))),
        Step("latency", "fxbroker AsyncClient", lambda: fx.latency_async(figures, d, s)),
        Step("latency", "fxbroker Client polling", lambda: fx.latency_polling(figures, d, s)),
        Step("seed", "fxbroker seed example", lambda: fx.seed(figures, d, s)),
        Step("async", "fxbroker async tasks", lambda: fx.async_concurrency(
            figures, d, fx.PROCESS, s.async_tasks, ASYNC_ROW, s)),
        Step("async", "fxbroker async tasks, wide agent", lambda: fx.async_concurrency(
            figures, d, fx.WIDE, s.async_wide_tasks, ASYNC_WIDE_ROW, s)),
        Step("submission", "fxbroker submission", lambda: fx.submission(figures, d, s)),
        Step("fan-out", "fxbroker fan-out", lambda: fx.fanout(figures, d, s)),
        Step("payload", "fxbroker payload", lambda: fx.payload(figures, d, s)),
        Step("demo", "fxbroker demo", lambda: demo_run.demo(figures, workdir, s)),
    ]  # fmt: skip


def _engine_steps(figures: Figures, d: Deployment, s: BenchSettings) -> list[Step]:
    def step(engine: str) -> Step:
        return Step("engines", f"fxbroker engine {engine}",
                    lambda: engines.engine_row(figures, d, engine, s))  # fmt: skip

    return [step(engine) for engine in engines.ENDPOINTS]


def _peer_step(figures: Figures, s: BenchSettings, make: Callable[[], Peer], name: str) -> Step:
    def run() -> None:
        with make() as peer:
            wall = peer.throughput(s.throughput_tasks, s.task_timeout_s)
            figures.add("throughput", peer.name, peer.variant, "throughput",
                        s.throughput_tasks / wall, unit="tasks/s", better="higher")  # fmt: skip
            ms = [x * 1000 for x in peer.latency(s.latency_round_trips, s.task_timeout_s)]
        for q in (50, 99):
            figures.add("latency", peer.name, peer.variant, f"p{q}", percentile(ms, q),
                        unit="ms", better="lower")  # fmt: skip

    return Step("peers", name, run)


def _peer_payload_step(
    figures: Figures, s: BenchSettings, make: Callable[[], Peer], name: str
) -> Step:
    def run() -> None:
        data = os.urandom(s.payload_bytes)  # random, so no compression on the way helps
        with make() as peer:
            wall = peer.payload(s.payload_tasks, data, s.task_timeout_s)
        figures.add("payload", peer.name, peer.variant, "throughput",
                    fx.payload_megabytes(s) / wall, unit="MB/s", better="higher")  # fmt: skip

    return Step("payload", f"{name} payload", run)


def _peer_steps(
    figures: Figures, s: BenchSettings, redis_url: str, tag: str, procs: Processes
) -> list[Step]:
    w = s.pool_workers
    makers: list[tuple[str, Callable[[], Peer]]] = [
        ("ProcessPoolExecutor", lambda: PoolPeer(w)),
        ("celery", lambda: CeleryPeer(redis_url, tag, procs, w)),
        ("rq", lambda: RqPeer(redis_url, tag, procs, w)),
        ("arq", lambda: ArqPeer(redis_url, tag, procs, s.poll_interval_s)),
    ]
    steps = [_peer_step(figures, s, make, name) for name, make in makers]
    return steps + [_peer_payload_step(figures, s, make, name) for name, make in makers]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(settings: BenchSettings) -> tuple[str, dict[str, Any]]:
    """Run every workload ``settings.repeat`` times; the table and the JSON document."""
    s = settings
    tag = uuid.uuid4().hex[:10]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="fxbroker-bench-"))
    figures = Figures()
    agents = [
        AgentSpec(fx.PROCESS, "process", 2),
        AgentSpec(fx.THREAD, "thread", 2),
        AgentSpec(fx.PREFETCH, "process", 2, prefetch=fx.PREFETCH_TASKS),
        AgentSpec(fx.SEED, "thread", s.seed_workers),
        AgentSpec(fx.WIDE, "process", 2, max_concurrency=fx.WIDE_SLOTS),
    ]
    with_engines = not s.only or "engines" in s.only
    sites: AbstractContextManager[engines.EngineSites | None] = (
        engines.EngineSites(workdir, start_timeout_s=s.start_timeout_s)
        if with_engines
        else nullcontext()
    )
    try:
        with (
            RedisServer(s.redis_url, cluster=s.redis_cluster) as redis_server,
            sites as engine_sites,
        ):
            # Celery, RQ and arq speak to one Redis only: on a cluster they get one of their own.
            peers_apart = is_cluster_url(redis_server.url) and _runs_peers(s)
            peer_redis: AbstractContextManager[RedisServer] = (
                RedisServer(None) if peers_apart else nullcontext(redis_server)
            )
            with peer_redis as peer_server:
                _run_steps(
                    s, tag, workdir, figures, agents, redis_server, peer_server, engine_sites
                )
                urls = {redis_server.url, peer_server.url}
                keys_left = sum(count_matching(url, f"*{tag}*") for url in urls)
            meta = _meta(s, tag, redis_server, peers_apart, keys_left, time.monotonic() - started)
    except BaseException:
        _say(f"the run failed; the logs of its processes are in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    found = targets(figures)
    redis = meta["redis"]
    header = (
        f"fxbroker bench: median of {s.repeat}, {meta['machine']['cpus']} CPUs, "
        f"Redis {redis['version']} ({redis['kind']}), {meta['elapsed_s']:.0f} s\n"
        f"redis: {redis['topology']}"
    )
    if peers_apart:
        header += f"; peers (Celery, RQ, arq): {PEERS_APART}"
    if s.quick:
        header += "\nQUICK RUN: tiny counts, one repeat; the figures and targets mean nothing"
    return render(figures, found, header=header), to_json(figures, found, meta=meta)


def _runs_peers(s: BenchSettings) -> bool:
    """Whether a peer (Celery, RQ, arq) runs: in the peers' rows or the payload rows."""
    return not s.only or bool(s.only & {"peers", "payload"})


def _run_steps(
    s: BenchSettings,
    tag: str,
    workdir: Path,
    figures: Figures,
    agents: list[AgentSpec],
    redis_server: RedisServer,
    peer_server: RedisServer,
    engine_sites: engines.EngineSites | None,
) -> None:
    """Start the platform on ``redis_server`` and the peers on ``peer_server``, run every
    step ``s.repeat`` times in rotated order, and stop them (each deletes its keys)."""
    platform_ = Platform(
        redis_url=redis_server.url, database_url=s.database_url, workdir=workdir,
        tag=tag, agents=agents + (engine_sites.agents if engine_sites is not None else []),
        idle_endpoints=[fx.IDLE], start_timeout_s=s.start_timeout_s,
    )  # fmt: skip
    with platform_ as deployment, Processes(workdir / "peers.log") as peer_procs:
        steps = _fx_steps(figures, deployment, s, workdir)
        steps += _peer_steps(figures, s, peer_server.url, tag, peer_procs)
        if engine_sites is not None:
            steps += _engine_steps(figures, deployment, s)
        if s.only:
            steps = [step for step in steps if step.workload in s.only]
        for r in range(s.repeat):
            shift = r % len(steps)
            for step in steps[shift:] + steps[:shift]:
                t0 = time.monotonic()
                step.run()
                platform_.processes.check()
                if engine_sites is not None:
                    engine_sites.check()
                _say(f"[{r + 1}/{s.repeat}] {step.name}: {time.monotonic() - t0:.1f} s")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _plain(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    return str(value) if isinstance(value, Path) else value


def _meta(
    s: BenchSettings,
    tag: str,
    redis_server: RedisServer,
    peers_apart: bool,
    keys_left: int,
    elapsed_s: float,
) -> dict[str, Any]:
    hidden = ("redis_url", "database_url")  # may carry credentials
    settings = {k: _plain(v) for k, v in asdict(s).items() if k not in hidden}
    return {
        "tag": tag,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": elapsed_s,
        "settings": settings,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "redis": {
            "version": redis_server.version(),
            "kind": redis_server.kind,
            "topology": redis_server.topology,
            "peers": PEERS_APART if peers_apart else "the same Redis",
            "keys_left": keys_left,
        },
        "versions": {p: _version(p) for p in PACKAGES},
    }


def main_run(settings: BenchSettings) -> int:
    table, data = run(settings)
    print(table, flush=True)
    write_json(settings.json_path, data)
    _say(f"written to {settings.json_path}")
    return 0
