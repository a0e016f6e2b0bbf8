"""``python -m bench.hop_cost``: every role gets a CPU figure from a real run, the ``/proc``
readings see a busy descendant, and the py-spy summaries count what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.hop_cost import ROLES, _cpu_s, _descendants, top_own, top_project
from bench.latency_split import SEGMENTS, STYLES

REPO = Path(__file__).resolve().parent.parent

RAW = """\
main (app.py:1);run (ws_service/gateway/session.py:10);send (websockets/connection.py:5) 6
main (app.py:1);run (ws_service/gateway/session.py:12);send (websockets/connection.py:7) 2
main (app.py:1);pack (redis/connection.py:3) 2
"""


def test_top_own_sums_leaf_samples_per_function_not_per_line() -> None:
    assert top_own(RAW) == [("send (connection.py)", 80.0), ("pack (connection.py)", 20.0)]


def test_top_project_counts_a_function_once_per_stack() -> None:
    assert top_project(RAW) == [("run (session.py)", 80.0)]


def test_a_descendant_is_found_and_its_cpu_counted_once_reaped() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    spawn = (
        f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}], timeout=60)\n"
        "print('reaped', flush=True)\nsys.stdin.read()"
    )
    args = [sys.executable, "-c", spawn]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        deadline = time.monotonic() + 30
        below: list[int] = []
        while len(below) < 2 and time.monotonic() < deadline:
            below = _descendants(os.getpid())
        assert child.pid in below and len(below) == 2, below
        assert child.stdout is not None and child.stdout.readline() == "reaped\n"
        own_s, reaped_s = _cpu_s(child.pid)
        assert reaped_s >= 0.25 > own_s
        child.kill()


def test_hop_cost_prints_a_cpu_figure_for_every_role(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hop_cost", "--tasks", "1000", "--repeat", "1",
         "--redis-url", redis_url],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    for role in (*ROLES, "total"):
        line = re.search(rf"^{re.escape(role)} +(\d+)  ", done.stdout, re.MULTILINE)
        assert line is not None, (role, done.stdout)
        if role not in ("web", "redis"):  # ticks are 10 ms: small figures may round to 0
            assert int(line.group(1)) > 0, (role, done.stdout)
    assert re.search(r"^wall: \d+ tasks/s", done.stdout, re.MULTILINE)
    calls = re.search(r"^redis commands/task: ([\d.]+)", done.stdout, re.MULTILINE)
    assert calls is not None and float(calls.group(1)) >= 2.0  # at least submit and settle


@pytest.mark.parametrize("style", ["push", "long-poll"])
def test_latency_split_prints_every_segment(redis_url: str, style: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.latency_split", "--trips", "20", "--redis-url", redis_url,
         "--style", style],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert STYLES[style] in done.stdout
    for segment in (*SEGMENTS, "round trip"):
        line = re.search(rf"^  {re.escape(segment)} +([\d.]+)", done.stdout, re.MULTILINE)
        assert line is not None, (segment, done.stdout)
        assert float(line.group(1)) >= 0, (segment, done.stdout)
    trip = re.search(r"^  round trip +([\d.]+)  \(p99 ([\d.]+)\)", done.stdout, re.MULTILINE)
    assert trip is not None and 0 < float(trip.group(1)) <= float(trip.group(2)), done.stdout
    cpu = re.search(r"^  sum +([\d.]+)  \((\d+)% of the mean round trip", done.stdout, re.MULTILINE)
    assert cpu is not None and float(cpu.group(1)) > 0, done.stdout  # 20 trips cost some CPU


def test_hop_cost_of_the_async_row_prints_its_wall_beyond_the_sleep(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hop_cost", "--tasks", "200", "--repeat", "1",
         "--async-sleep", "--redis-url", redis_url],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "async def tasks awaiting asyncio.sleep(1), AsyncClient gather" in done.stdout
    wall = re.search(r"^wall: ([\d.]+) s, the last 1 s of it asleep", done.stdout, re.MULTILINE)
    assert wall is not None and float(wall.group(1)) >= 1.0, done.stdout  # they did sleep
    line = re.search(r"^agent +(\d+)  ", done.stdout, re.MULTILINE)
    assert line is not None and int(line.group(1)) > 0, done.stdout


def test_hop_cost_of_the_fan_out_row_meters_many_clients(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hop_cost", "--fan-out", "--clients", "20", "--repeat", "1",
         "--redis-url", redis_url],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "hop cost: 1,000 no-op tasks, fan-out" in done.stdout  # 20 clients x 50 results
    assert re.search(r"^wall: [\d.]+ s  \(", done.stdout, re.MULTILINE), done.stdout
    for role in ("client", "ws (gateway)", "agent"):
        line = re.search(rf"^{re.escape(role)} +(\d+)  ", done.stdout, re.MULTILINE)
        assert line is not None and int(line.group(1)) > 0, (role, done.stdout)
