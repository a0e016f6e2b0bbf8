"""The benchmark harness: ``python -m bench --quick`` produces every row with sane numbers,
writes parseable JSON and leaves no key of its own in Redis; the report's arithmetic."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import FXBROKER, PEERS, Figures, percentile, render, targets
from bench.services import count_matching

REPO = Path(__file__).resolve().parent.parent

FX_ROWS = {
    ("throughput", "Executor, process x2", "throughput"),
    ("throughput", "Executor, thread x2", "throughput"),
    ("throughput", "Executor, process x2, prefetch 8", "throughput"),
    ("throughput", "batch_run + polling, process x2", "throughput"),
    ("throughput", "batch_run + polling, thread x2", "throughput"),
    ("latency", "AsyncClient (push)", "p50"),
    ("latency", "AsyncClient (push)", "p99"),
    ("latency", "Client (polling every 5 ms)", "p50"),
    ("latency", "Client (polling every 5 ms)", "p99"),
    ("seed", "Executor, thread x16", "wall"),
    ("async", "AsyncClient, process x2", "wall"),
    ("submission", "Client.batch_run", "accepted"),
    ("submission", "Client.batch_run", "memory"),
    ("fan-out", "10 AsyncClients x 5", "wall"),
    ("fan-out", "10 AsyncClients x 5", "p99"),
}


def test_quick_run_produces_every_row(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    figures = {(f["workload"], f["system"], f["variant"], f["metric"]): f for f in data["figures"]}

    fx = {(w, v, m) for (w, system, v, m) in figures if system == FXBROKER}
    assert fx == FX_ROWS
    for peer in PEERS:
        metrics = {(w, m) for (w, system, _, m) in figures if system == peer}
        assert metrics == {("throughput", "throughput"), ("latency", "p50"), ("latency", "p99")}

    for key, f in figures.items():
        assert len(f["samples"]) == 1, key
        assert math.isfinite(f["median"]), key
        if f["metric"] != "memory":  # a memory delta can be anything on a shared Redis
            assert f["median"] > 0, key
    for (workload, system, variant, metric), f in figures.items():
        if metric == "p50":
            assert f["median"] <= figures[(workload, system, variant, "p99")]["median"]
    assert figures[("seed", FXBROKER, "Executor, thread x16", "wall")]["median"] >= 1.0
    assert figures[("async", FXBROKER, "AsyncClient, process x2", "wall")]["median"] >= 1.0

    assert {r["peer"] for r in data["ratios"]} == set(PEERS)
    assert all(r["ratio"] is not None and r["ratio"] > 0 for r in data["ratios"])
    assert len(data["targets"]) == 6
    for target in data["targets"]:
        verdict = "PASS" if target["passed"] else "FAIL"
        assert f"{verdict}  {target['name']}" in done.stdout
    assert "QUICK RUN" in done.stdout
    assert count_matching(redis_url, f"*{data['tag']}*") == 0


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def _figures(fx_throughput: float, fx_p50: float) -> Figures:
    f = Figures()
    tp = "throughput"
    f.add(tp, FXBROKER, "Executor, process x2", tp, fx_throughput, unit="/s", better="higher")
    f.add("latency", FXBROKER, "AsyncClient (push)", "p50", fx_p50, unit="ms", better="lower")
    for peer, throughput, p50 in (("ProcessPoolExecutor", 4000.0, 0.3), ("celery", 300.0, 4.0),
                                  ("rq", 400.0, 3.0), ("arq", 600.0, 6.0)):  # fmt: skip
        f.add(tp, peer, "x2", tp, throughput - 10, unit="/s", better="higher")
        f.add(tp, peer, "x2", tp, throughput, unit="/s", better="higher")
        f.add(tp, peer, "x2", tp, throughput + 1000, unit="/s", better="higher")
        f.add("latency", peer, "x2", "p50", p50, unit="ms", better="lower")
    f.add("seed", FXBROKER, "Executor, thread x64", "wall", 1.1, unit="s", better="lower")
    f.add("async", FXBROKER, "AsyncClient, process x2", "wall", 1.4, unit="s", better="lower")
    f.add("submission", FXBROKER, "Client.batch_run", "accepted", 30_000, unit="/s",
          better="higher")  # fmt: skip
    return f


def test_targets_compare_medians_with_the_best_broker_peer() -> None:
    verdicts = {t.name: t for t in targets(_figures(3000.0, 1.5))}
    fastest = verdicts["throughput >= 5x fastest broker peer"]
    assert fastest.threshold == 5 * 600.0 and fastest.passed and "arq" in fastest.note
    assert verdicts["throughput >= 0.5x bare ProcessPoolExecutor"].threshold == 2000.0
    latency = verdicts["AsyncClient latency p50 <= 0.5x best broker peer's"]
    assert latency.threshold == 1.5 and latency.passed and "rq" in latency.note
    assert verdicts["seed example (50 x sleep 1 s) wall"].passed
    assert not verdicts["1,000 async sleep(1) tasks wall"].passed
    assert verdicts["submission accepted"].passed

    slower = {t.name: t.passed for t in targets(_figures(2999.0, 1.6))}
    assert not slower["throughput >= 5x fastest broker peer"]
    assert not slower["AsyncClient latency p50 <= 0.5x best broker peer's"]


def test_render_shows_ratios_fxbroker_over_peer() -> None:
    figures = _figures(3000.0, 1.5)
    table = render(figures, targets(figures), header="h")
    ratio_line = next(line for line in table.splitlines() if line.startswith("throughput  Ex"))
    assert ratio_line.split()[-4:] == ["0.75", "10.0", "7.5", "5"]
    assert "PASS  submission accepted: 30,000 tasks/s >= 30,000" in table
