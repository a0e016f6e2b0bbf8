"""``python -m bench.hop_cost``: the CPU each process spends per task, through the gateway.

The throughput row's path (``Executor`` -> ``fxbroker web`` -> Redis -> the gateway in
``fxbroker ws`` -> one ``fxbroker endpoint start`` agent, process engine x2, and back) is run
on ``--tasks`` no-op tasks, and the CPU time (user + sys) each process used during the clocked
part is divided by the task count:

* ``client``: this process (``os.times``), where the ``Executor`` and its thread run;
* ``web``, ``ws (gateway)``, ``agent``: ``/proc/<pid>/stat`` of each service process;
* ``agent workers``: every descendant of the agent (its worker processes), plus whatever the
  agent reaped from children that exited during the run;
* ``redis``: ``INFO cpu`` (``used_cpu_user`` + ``used_cpu_sys``) of the server, summed over
  every primary of a cluster.

It also counts Redis commands per task (``INFO commandstats`` calls, summed over the
primaries). The Redis is a private ``redis-server`` (a private cluster of three masters with
``--redis-cluster``) unless ``--redis-url`` is given, so no other client's commands or CPU
are counted. Each figure is the median of ``--repeat`` samples on one running platform.

``--async-sleep`` runs the async row's tasks instead (``async def`` awaiting
``asyncio.sleep(1)``, all ``--tasks`` gathered at once by one ``AsyncClient``, on the same
agent, whose 1,000 async slots take them at once); the wall is then printed in seconds.
``--fan-out`` runs the fan-out row instead (200 AsyncClients in this process, or
``--clients``, each with its own WebSocket and task group, each gathering 50 no-op runs:
10,000 tasks, ``--tasks`` unused), and prints its wall in seconds.

``--py-spy DIR`` adds one more sample, not counted, with ``py-spy record`` attached to the ws
and agent processes, and prints the functions with the most own time in each (the raw
collapsed stacks are left in ``DIR``). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from bench import fx_workloads as fx
from bench import tasks
from bench.platform import AgentSpec, Deployment, Platform
from bench.redis_admin import command_calls, info_total, primaries
from bench.services import RedisServer
from bench.settings import BenchSettings

ROLES = ("client", "web", "ws (gateway)", "agent", "agent workers", "redis")
EXECUTOR, ASYNC_SLEEP, FAN_OUT = "executor", "async-sleep", "fan-out"
"""The workloads: the Executor's no-ops (or echoes), the async row, the fan-out row."""
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_PROJECT = ("ws_service/", "service_common/", "endpoint_agent/", "sdk/", "web_service/")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 is index 0)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cpu_s(pid: int) -> tuple[float, float]:
    """(own user + sys, reaped children's user + sys) of ``pid``, in seconds."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) * _TICK_S, (int(f[13]) + int(f[14])) * _TICK_S


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (one scan of ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError):
                continue  # exited while scanning
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far per role (workers per pid) and Redis command calls so far."""

    cpu_s: dict[str, float]
    workers_s: dict[int, float]
    redis_calls: Counter[str]


class CpuMeter:
    """``with CpuMeter(...) as m:`` around the clocked span; then ``m.per_task_us(n)``."""

    def __init__(self, pids: dict[str, int], redis_url: str) -> None:
        self._pids = pids
        self._redis_url = redis_url
        self._stack = ExitStack()
        self._servers: list[redis.Redis] = []
        self.before: Snapshot | None = None
        self.after: Snapshot | None = None

    def _take(self) -> Snapshot:
        times = os.times()
        cpu = {"client": times.user + times.system}
        for role, pid in self._pids.items():
            own, reaped = _cpu_s(pid)
            cpu[role] = own
            if role == "agent":
                cpu["agent reaped"] = reaped
        workers = {pid: sum(_cpu_s(pid)) for pid in _descendants(self._pids["agent"])}
        cpu["redis"] = info_total(self._servers, "cpu", ("used_cpu_user", "used_cpu_sys"))
        return Snapshot(cpu, workers, command_calls(self._servers))

    def __enter__(self) -> CpuMeter:
        self._servers = self._stack.enter_context(primaries(self._redis_url))
        try:
            self.before = self._take()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._stack:
            self.after = self._take()

    def per_task_us(self, n: int) -> tuple[dict[str, float], Counter[str]]:
        """CPU µs per task by role, and Redis calls per command over the span."""
        assert self.before is not None and self.after is not None, "use it in a with block"
        b, a = self.before, self.after
        us = {r: (a.cpu_s[r] - b.cpu_s[r]) * 1e6 / n for r in ROLES if r != "agent workers"}
        workers = sum(s - b.workers_s.get(pid, 0.0) for pid, s in a.workers_s.items())
        workers += a.cpu_s["agent reaped"] - b.cpu_s["agent reaped"]
        us["agent workers"] = workers * 1e6 / n
        return us, a.redis_calls - b.redis_calls


def throughput_platform(redis_url: str, workdir: Path, s: BenchSettings) -> Platform:
    """The throughput row's platform alone: web, ws and one agent (process engine, 2
    workers) on ``redis_url``, its logs in ``workdir``."""
    return Platform(
        redis_url=redis_url, database_url=None, workdir=workdir, tag=uuid.uuid4().hex[:10],
        agents=[AgentSpec(fx.PROCESS, "process", 2)], idle_endpoints=[],
        start_timeout_s=s.start_timeout_s,
    )  # fmt: skip


def service_pids(platform_: Platform) -> dict[str, int]:
    """The service processes by role, from the command each was started with."""
    role = {"web": "web", "ws": "ws (gateway)", "endpoint": "agent"}
    return {role[str(p.args[3])]: p.pid for p in platform_.processes.running}  # type: ignore[index]


def tasks_per_sample(s: BenchSettings, mode: str) -> int:
    """How many tasks one sample of ``mode`` runs."""
    return s.fanout_clients * s.fanout_results if mode == FAN_OUT else s.throughput_tasks


def _sample(
    d: Deployment,
    pids: dict[str, int],
    s: BenchSettings,
    payload: bytes | None = None,
    *,
    mode: str = EXECUTOR,
) -> tuple[float, CpuMeter]:
    meter = CpuMeter(pids, d.redis_url)
    n = tasks_per_sample(s, mode)
    if mode == ASYNC_SLEEP:
        wall = fx.async_wall(d, fx.PROCESS, n, s, meter=meter)
    elif mode == FAN_OUT:
        wall, _ = fx.fanout_wall(d, s, meter=meter)
    elif payload is None:
        wall = fx.executor_wall(d, fx.PROCESS, tasks.noop, n, s, meter=meter)
    else:
        wall = fx.executor_wall(
            d, fx.PROCESS, tasks.echo, n, s, args=(payload,), expect=payload, meter=meter
        )
    return n / wall, meter


def top_own(raw: str, top: int = 8) -> list[tuple[str, float]]:
    """The leaf functions of py-spy's collapsed stacks with the most samples, as % of all."""
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[_frame(stack.rsplit(";", 1)[-1])] += int(count)
    total = sum(own.values()) or 1
    return [(name, 100.0 * c / total) for name, c in own.most_common(top)]


def top_project(raw: str, top: int = 8) -> list[tuple[str, float]]:
    """fxbroker's own functions by inclusive samples (on the stack at all), as % of all."""
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        total += int(count)
        names = {_frame(f) for f in stack.split(";") if any(p in f for p in _PROJECT)}
        for name in names:
            incl[name] += int(count)
    return [(name, 100.0 * c / (total or 1)) for name, c in incl.most_common(top)]


def _frame(frame: str) -> str:
    """``fn (path/to/mod.py:123)`` -> ``fn (mod.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def _spy(pid: int, raw_path: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` into ``raw_path`` (collapsed stacks) until SIGINT."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
            "--nonblocking", "-o", str(raw_path)]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _profiled(
    d: Deployment,
    pids: dict[str, int],
    s: BenchSettings,
    out: Path,
    payload: bytes | None,
    *,
    mode: str = EXECUTOR,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    targets = {role: pids[role] for role in ("web", "ws (gateway)", "agent")}
    targets["client"] = os.getpid()
    for i, pid in enumerate(_descendants(pids["agent"])[:3]):
        targets[f"worker{i}"] = pid
    spies = {role: _spy(pid, out / f"{role.split()[0]}.txt") for role, pid in targets.items()}
    try:
        _sample(d, pids, s, payload, mode=mode)
    finally:
        for proc in spies.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    for role in spies:
        raw = (out / f"{role.split()[0]}.txt").read_text()
        print(f"\n{role}: own time, % of samples")
        for name, pct in top_own(raw):
            print(f"  {pct:5.1f}  {name}")
        print(f"{role}: fxbroker functions on the stack, % of samples")
        for name, pct in top_project(raw):
            print(f"  {pct:5.1f}  {name}")


def render(
    rows: list[tuple[float, dict[str, float], Counter[str]]],
    n: int,
    payload_bytes: int = 0,
    *,
    mode: str = EXECUTOR,
) -> str:
    """The table: median CPU µs per task by role, wall tasks/s, Redis commands per task."""
    med = {r: statistics.median(us[r] for _, us, _ in rows) for r in ROLES}
    what = f"echo tasks of {payload_bytes:,} bytes" if payload_bytes else "no-op tasks"
    client = "Executor"
    if mode == ASYNC_SLEEP:
        what, client = "async def tasks awaiting asyncio.sleep(1)", "AsyncClient gather"
    elif mode == FAN_OUT:
        client = "fan-out (many AsyncClients, each gathering its runs)"
    lines = [f"hop cost: {n:,} {what}, {client} -> web -> gateway -> agent (process x2), "
             f"median of {len(rows)}", f"{'process':<16}{'CPU us/task':>12}  samples"]  # fmt: skip
    for role in ROLES:
        samples = ", ".join(f"{us[role]:.0f}" for _, us, _ in rows)
        lines.append(f"{role:<16}{med[role]:>12.0f}  {samples}")
    totals = [sum(us.values()) for _, us, _ in rows]
    lines.append(f"{'total':<16}{statistics.median(totals):>12.0f}  "
                 + ", ".join(f"{t:.0f}" for t in totals))  # fmt: skip
    rates = [rate for rate, _, _ in rows]
    lines.append(f"wall: {statistics.median(rates):.0f} tasks/s  "
                 f"({', '.join(f'{r:.0f}' for r in rates)})")  # fmt: skip
    if mode != EXECUTOR:
        walls = [n / rate for rate in rates]
        asleep = ", the last 1 s of it asleep" if mode == ASYNC_SLEEP else ""
        lines.append(f"wall: {statistics.median(walls):.3f} s{asleep}  "
                     f"({', '.join(f'{w:.3f}' for w in walls)})")  # fmt: skip
    if payload_bytes:
        mbs = [rate * 2 * payload_bytes / 1e6 for rate in rates]
        lines.append(f"payload: {statistics.median(mbs):.1f} MB/s in and out  "
                     f"({', '.join(f'{m:.1f}' for m in mbs)})")  # fmt: skip
    per_cmd = Counter({c: statistics.median(k[c] for _, _, k in rows) / n
                       for _, _, k in rows for c in k})  # fmt: skip
    top = ", ".join(f"{c} {v:.2f}" for c, v in per_cmd.most_common(10) if v >= 0.01)
    lines.append(f"redis commands/task: {sum(per_cmd.values()):.2f} ({top})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hop_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--tasks", type=int, default=5_000, help="tasks per sample (default 5,000)")
    add("--payload", type=int, default=0, metavar="BYTES",
        help="echo tasks carrying BYTES random bytes each way instead of no-ops")  # fmt: skip
    add("--async-sleep", action="store_true",
        help="the async row's tasks instead: async def sleep(1), AsyncClient gather")  # fmt: skip
    add("--fan-out", action="store_true",
        help="the fan-out row instead: AsyncClients x 50 no-ops each (--tasks unused)")  # fmt: skip
    add("--clients", type=int, default=BenchSettings().fanout_clients,
        help="the fan-out's AsyncClients (default 200)")  # fmt: skip
    add("--repeat", type=int, default=3, help="samples, median shown (default 3)")
    add("--redis-url", default=None, help="a Redis to use (default: a private redis-server)")
    add("--redis-cluster", action="store_true", help="run on a private Redis Cluster of 3 masters")
    add("--py-spy", type=Path, default=None, metavar="DIR",
        help="one more sample with py-spy on ws and agent; raw stacks go to DIR")  # fmt: skip
    args = parser.parse_args(argv)
    s = BenchSettings.full(
        throughput_tasks=args.tasks, repeat=args.repeat, fanout_clients=args.clients
    )
    payload = os.urandom(args.payload) if args.payload else None
    chosen = [m for m, on in ((ASYNC_SLEEP, args.async_sleep), (FAN_OUT, args.fan_out)) if on]
    if len(chosen) + (payload is not None) > 1:
        parser.error("--async-sleep, --fan-out and --payload are each a workload; choose one")
    mode = chosen[0] if chosen else EXECUTOR
    n = tasks_per_sample(s, mode)
    workdir = Path(tempfile.mkdtemp(prefix="fxbroker-hop-cost-"))
    rows: list[tuple[float, dict[str, float], Counter[str]]] = []
    try:
        with RedisServer(args.redis_url, cluster=args.redis_cluster) as server:
            platform_ = throughput_platform(server.url, workdir, s)
            with platform_ as deployment:
                pids = service_pids(platform_)
                for i in range(s.repeat):
                    rate, meter = _sample(deployment, pids, s, payload, mode=mode)
                    rows.append((rate, *meter.per_task_us(n)))
                    platform_.processes.check()
                    print(f"[{i + 1}/{s.repeat}] {rate:.0f} tasks/s", file=sys.stderr)
                print(render(rows, n, args.payload, mode=mode), flush=True)
                if args.py_spy is not None:
                    _profiled(deployment, pids, s, args.py_spy, payload, mode=mode)
    except BaseException:
        print(f"the run failed; the logs of its processes are in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
