"""``python -m bench.latency_split``: where one AsyncClient round trip spends its time.

The latency row's path (``await fx.run(...)`` of a no-op: submit over HTTP, the gateway in
``fxbroker ws`` hands it to one ``fxbroker endpoint start`` agent, process engine x2, and the
result comes back pushed over the client's WebSocket) is run ``--trips`` times in sequence on
its own platform and a private ``redis-server`` (or ``--redis-url``, or a private cluster of
three masters with ``--redis-cluster``); each trip is cut at the times the task's hash
records (``created_at`` when the web service queued it, ``started_at`` when the gateway started
it, ``completed_at`` when the gateway stored its outcome; one clock, one machine):

* ``submit``: from the call until the web service queued the task (client, HTTP, web);
* ``to start``: queued until started (the gateway's read and start script);
* ``to run``: started until its outcome was stored (the window to the agent, the pipe to the
  worker and back, the call, the outcome to the gateway, the settle script);
* ``to client``: stored until the client had the result (the notice and the push over the
  WebSocket, the client's decoding).

Each figure is the median over the trips, in ms, with the whole round trip's p50 and p99.
``--style long-poll`` times the long poll row's trips instead (``Client.run``, then
``Client.wait``, whose request the web service answers when the result exists).

Then the CPU each process spent per round trip (as ``python -m bench.hop_cost`` counts it,
over all the trips, divided by their number). The trips run one after another, so each
process's CPU for a trip lies on that trip's path: their sum is a floor under the round
trip that only less work per hop (or fewer hops) lowers; the rest of the round trip is
waiting (wakeups, scheduling, the network stack) between the hops.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import fx_workloads as fx
from bench import tasks
from bench.hop_cost import ROLES, CpuMeter, service_pids, throughput_platform
from bench.platform import Deployment
from bench.redis_admin import open_redis
from bench.services import RedisServer
from bench.settings import BenchSettings
from fxbroker import AsyncClient
from sdk.keys import Keys
from sdk.messages import hash_seconds, stored, task_created_at

SEGMENTS = ("submit", "to start", "to run", "to client")


async def _trips(
    d: Deployment, n: int, timeout_s: float, meter: CpuMeter
) -> list[tuple[float, float, str]]:
    """``n`` sequential round trips: (start, end, task id), wall-clock seconds; ``meter``
    spans them (not the warm-up)."""
    async with AsyncClient(d.url, d.token, ws_url=d.ws_url,
                           endpoint_id=d.endpoints[fx.PROCESS]) as client:  # fmt: skip
        fid = await client.register_function(tasks.noop)
        await asyncio.wait_for(client.run(function_id=fid), timeout_s)  # warm-up
        trips = []
        with meter:
            for _ in range(n):
                start = time.time()
                handle = client.submit(function_id=fid)
                await asyncio.wait_for(handle, timeout_s)
                end = time.time()
                assert handle.task_id is not None
                trips.append((start, end, handle.task_id))
        return trips


def _poll_trips(
    d: Deployment, n: int, s: BenchSettings, meter: CpuMeter
) -> list[tuple[float, float, str]]:
    """:func:`_trips` for the long poll row: ``Client.run`` then ``Client.wait``."""
    endpoint_id = d.endpoints[fx.PROCESS]
    with d.client() as client:
        fid = client.register_function(tasks.noop)
        client.wait([client.run(function_id=fid, endpoint_id=endpoint_id)],
                    timeout_s=s.task_timeout_s)  # fmt: skip
        trips = []
        with meter:
            for _ in range(n):
                start = time.time()
                task_id = client.run(function_id=fid, endpoint_id=endpoint_id)
                client.wait([task_id], timeout_s=s.task_timeout_s, poll_s=s.poll_interval_s)
                trips.append((start, time.time(), task_id))
        return trips


def split(d: Deployment, trips: list[tuple[float, float, str]]) -> dict[str, list[float]]:
    """Each trip's segments (ms), from the timestamps its task's hash records."""
    keys = Keys(d.key_prefix)
    store = open_redis(d.redis_url, decode_responses=True)
    try:
        pipe = store.pipeline(transaction=False)
        for _, _, task_id in trips:
            pipe.hmget(keys.task(task_id), stored("started_at", "completed_at"))
        stamps = pipe.execute()
    finally:
        store.close()
    parts: dict[str, list[float]] = {name: [] for name in (*SEGMENTS, "round trip")}
    for (start, end, task_id), (started, completed) in zip(trips, stamps, strict=True):
        created = task_created_at(task_id) or math.nan
        points = [start, created, *(hash_seconds(t) or math.nan for t in (started, completed)), end]
        for name, a, b in zip(SEGMENTS, points, points[1:], strict=False):
            parts[name].append((b - a) * 1000)
        parts["round trip"].append((end - start) * 1000)
    return parts


STYLES = {
    "push": "AsyncClient round trips (result pushed)",
    "long-poll": "Client round trips (run, then wait: a long poll)",
}


def render(
    parts: dict[str, list[float]], cpu_us: dict[str, float] | None = None, style: str = "push"
) -> str:
    trips = parts["round trip"]
    lines = [f"latency split: {len(trips)} sequential {STYLES[style]} of a no-op "
             "(process x2), median ms per segment"]  # fmt: skip
    for name in SEGMENTS:
        lines.append(f"  {name:<12}{statistics.median(parts[name]):>8.2f}")
    q = statistics.quantiles(trips, n=100)
    lines.append(f"  {'round trip':<12}{statistics.median(trips):>8.2f}  (p99 {q[98]:.2f})")
    if cpu_us is not None:
        lines.append("CPU per round trip, ms (every process's share lies on the trip's path)")
        for role in ROLES:
            lines.append(f"  {role:<14}{cpu_us[role] / 1000:>6.2f}")
        total = sum(cpu_us[role] for role in ROLES) / 1000
        lines.append(f"  {'sum':<14}{total:>6.2f}  ({total / statistics.mean(trips):.0%} of the "
                     "mean round trip; the rest is waiting between hops)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency_split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trips", type=int, default=300, help="round trips (default 300)")
    parser.add_argument("--style", choices=sorted(STYLES), default="push",
                        help="the client style of the trips (default: push)")  # fmt: skip
    parser.add_argument("--redis-url", default=None,
                        help="a Redis to use (default: a private redis-server)")  # fmt: skip
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run on a private Redis Cluster of 3 masters")  # fmt: skip
    args = parser.parse_args(argv)
    s = BenchSettings.full(repeat=1)
    workdir = Path(tempfile.mkdtemp(prefix="fxbroker-latency-split-"))
    with RedisServer(args.redis_url, cluster=args.redis_cluster) as server:
        platform_ = throughput_platform(server.url, workdir, s)
        with platform_ as d:
            meter = CpuMeter(service_pids(platform_), d.redis_url)
            if args.style == "push":
                trips = asyncio.run(_trips(d, args.trips, s.task_timeout_s, meter))
            else:
                trips = _poll_trips(d, args.trips, s, meter)
            cpu_us, _ = meter.per_task_us(len(trips))
            print(render(split(d, trips), cpu_us, args.style), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
