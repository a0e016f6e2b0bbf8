"""The benchmark harness: ``python -m bench --quick`` produces every row with sane numbers,
writes parseable JSON and leaves no key of its own in Redis; the report's arithmetic."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fx_workloads as fx
from bench.demo_run import parse_rates
from bench.redis_admin import (
    command_calls,
    count_matching,
    delete_matching,
    open_redis,
    primaries,
    topology,
    used_memory,
)
from bench.report import (
    ASYNC_WIDE_ROW,
    DEMO_STYLES,
    ENGINES,
    FXBROKER,
    PEERS,
    Figures,
    engine_ratios,
    fmt,
    percentile,
    render,
    targets,
    times_apart,
)
from fxbroker.demo import Row
from tests.private_cluster import PrivateCluster, require_redis_cli

REPO = Path(__file__).resolve().parent.parent

FX_ROWS = {
    ("throughput", "Executor, process x2", "throughput"),
    ("throughput", "Executor, thread x2", "throughput"),
    ("throughput", "Executor, process x2, prefetch 8", "throughput"),
    ("throughput", "batch_run + polling, process x2", "throughput"),
    ("throughput", "batch_run + polling, thread x2", "throughput"),
    ("throughput", "AsyncClient gather, process x2", "throughput"),
    ("latency", "AsyncClient (push)", "p50"),
    ("latency", "AsyncClient (push)", "p99"),
    ("latency", "Client (long poll)", "p50"),
    ("latency", "Client (long poll)", "p99"),
    ("seed", "Executor, thread x16", "wall"),
    ("async", "AsyncClient, 1,000 slots", "wall"),
    ("async", "AsyncClient, 10,000 slots", "wall"),
    ("submission", "Client.batch_run", "accepted"),
    ("submission", "Client.batch_run", "memory"),
    *(
        ("submission", "Client.batch_run", f"memory: {part}")
        for part in ("task hash", "stream entry", "group list", "rest")
    ),
    ("fan-out", "10 AsyncClients x 5", "wall"),
    ("fan-out", "10 AsyncClients x 5", "p99"),
    ("payload", "Executor, process x2", "throughput"),
    *(("demo", style, "throughput") for style in DEMO_STYLES),
}
ENGINE_VARIANTS = ("engine process x2", "engine rq x2", "engine parsl x2")
ENGINE_ROWS = {
    (ENGINES, variant, metric)
    for variant in ENGINE_VARIANTS
    for metric in ("throughput", "p50", "p99")
}
TARGETS = 15


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
    assert fx == FX_ROWS | ENGINE_ROWS
    for peer in PEERS:
        metrics = {(w, m) for (w, system, _, m) in figures if system == peer}
        assert metrics == {("throughput", "throughput"), ("latency", "p50"), ("latency", "p99"),
                           ("payload", "throughput")}  # fmt: skip

    for key, f in figures.items():
        assert len(f["samples"]) == 1, key
        assert math.isfinite(f["median"]), key
        # A used_memory delta (and so the rest beside the parts MEMORY USAGE counts) can be
        # anything on a shared Redis; the parts themselves are bytes that exist.
        if f["metric"] not in ("memory", "memory: rest"):
            assert f["median"] > 0, key
    for (workload, system, variant, metric), f in figures.items():
        if metric == "p50":
            assert f["median"] <= figures[(workload, system, variant, "p99")]["median"]
    assert figures[("seed", FXBROKER, "Executor, thread x16", "wall")]["median"] >= 1.0
    for variant in ("AsyncClient, 1,000 slots", "AsyncClient, 10,000 slots"):
        assert figures[("async", FXBROKER, variant, "wall")]["median"] >= 1.0

    assert {r["peer"] for r in data["ratios"]} == set(PEERS)
    assert all(r["ratio"] is not None and r["ratio"] > 0 for r in data["ratios"])
    assert len(data["targets"]) == TARGETS
    for target in data["targets"]:
        verdict = "PASS" if target["passed"] else "FAIL"
        assert f"{verdict}  {target['name']}" in done.stdout
    assert "QUICK RUN" in done.stdout
    assert f"redis: {data['redis']['topology']}" in done.stdout
    assert data["redis"]["keys_left"] == 0
    assert count_matching(redis_url, f"*{data['tag']}*") == 0


def test_quick_run_on_a_private_cluster(tmp_path: Path) -> None:
    """``--redis-cluster``: the latency rows (the quick counts) run on a private cluster of
    three masters, the report and the JSON say so, and the run found none of its keys left on
    any primary before it stopped the cluster. REDIS_URL is not used."""
    require_redis_cli()
    out = tmp_path / "results.json"
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}  # would fail if it were used
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "latency", "--redis-cluster",
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["settings"]["redis_cluster"] is True
    assert data["redis"]["kind"] == "private cluster"
    assert data["redis"]["topology"] == "cluster of 3 masters"
    assert data["redis"]["peers"] == "the same Redis"  # no peer ran (--only latency)
    assert re.search(r"^redis: cluster of 3 masters$", done.stdout, re.MULTILINE)
    figures = {(f["variant"], f["metric"]): f for f in data["figures"]}
    assert set(figures) == {(v, m) for (w, v, m) in FX_ROWS if w == "latency"}
    for (variant, metric), f in figures.items():
        assert f["system"] == FXBROKER and f["median"] > 0, (variant, metric)
        median = re.escape(fmt(f["median"]))
        row = rf"^latency\s+fxbroker {re.escape(variant)}\s+{metric} \(.*\s{median}\s"
        assert re.search(row, done.stdout, re.MULTILINE), (variant, metric)
    assert data["redis"]["keys_left"] == 0


def test_redis_admin_reaches_every_primary_of_a_cluster(tmp_path: Path) -> None:
    """Keys spread over the slots of three masters are counted, summed and deleted on every
    primary (a pattern's keys only, each through the primary that holds it)."""
    with PrivateCluster(tmp_path / "cluster") as cluster:
        client = open_redis(cluster.url)
        try:
            for i in range(300):
                client.set(f"fxbench-admin:{i}", b"x" * 64)
            client.set("other:1", b"y")
            with primaries(cluster.url) as servers:
                per_node = [len(list(s.scan_iter(match="fxbench-admin:*"))) for s in servers]
                assert command_calls(servers)["set"] == 301
            assert len(per_node) == 3 and all(n > 0 for n in per_node)
            assert sum(per_node) == 300
            assert topology(cluster.url) == "cluster of 3 masters"
            assert count_matching(cluster.url, "fxbench-admin:*") == 300
            assert used_memory(cluster.url) > 300 * 64
            assert delete_matching(cluster.url, "fxbench-admin:*") == 300
            assert count_matching(cluster.url, "fxbench-admin:*") == 0
            assert client.get("other:1") == b"y"
        finally:
            client.close()


def test_engine_rows_alone_print_each_engine_beside_the_process_engine(
    redis_url: str, tmp_path: Path
) -> None:
    """``--only engines`` with the quick counts (20 tasks, 5 round trips): the rq site and
    the Parsl block start, every engine row and its ratio to the process engine is printed
    and positive, and nothing the run started is left behind."""
    out = tmp_path / "results.json"
    env = {**os.environ, "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "engines", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["settings"]["engine_tasks"] == 20
    assert data["settings"]["engine_round_trips"] == 5
    figures = {(f["workload"], f["variant"], f["metric"]): f for f in data["figures"]}
    assert set(figures) == ENGINE_ROWS
    for (_, variant, metric), f in figures.items():
        assert f["system"] == FXBROKER
        assert len(f["samples"]) == 1 and f["median"] > 0, (variant, metric)
        median = re.escape(fmt(f["median"]))
        row = rf"^{ENGINES}\s+fxbroker {re.escape(variant)}\s+{metric} \(.*\s{median}\s"
        assert re.search(row, done.stdout, re.MULTILINE), (variant, metric)
    for variant in ENGINE_VARIANTS:
        p50, p99 = (figures[(ENGINES, variant, q)]["median"] for q in ("p50", "p99"))
        assert p50 <= p99
    ratios = {(r["variant"], r["metric"]): r for r in data["engine_ratios"]}
    assert set(ratios) == {(v, m) for (_, v, m) in ENGINE_ROWS if v != "engine process x2"}
    for (variant, metric), r in ratios.items():
        process = figures[(ENGINES, "engine process x2", metric)]["median"]
        assert r["ratio"] == pytest.approx(figures[(ENGINES, variant, metric)]["median"] / process)
        assert r["reference"] == "engine process x2"
    assert "engine / process engine" in done.stdout
    assert count_matching(redis_url, f"*{data['tag']}*") == 0
    assert not (REPO / "runinfo").exists()  # Parsl wrote into the run's folder only


def test_engine_ratios_divide_by_the_process_engine() -> None:
    f = Figures()
    for variant, tps, p50 in (("engine process x2", 500.0, 10.0), ("engine rq x2", 50.0, 30.0),
                              ("engine parsl x2", 250.0, 5.0)):  # fmt: skip
        f.add(ENGINES, FXBROKER, variant, "throughput", tps, unit="/s", better="higher")
        f.add(ENGINES, FXBROKER, variant, "p50", p50, unit="ms", better="lower")
    found = {(r.variant, r.metric): r.ratio for r in engine_ratios(f)}
    assert found == {
        ("engine rq x2", "throughput"): 0.1,
        ("engine rq x2", "p50"): 3.0,
        ("engine parsl x2", "throughput"): 0.5,
        ("engine parsl x2", "p50"): 0.5,
    }
    table = render(f, targets(f), header="h")
    rows = [line.split() for line in table.splitlines()]
    assert ["engine", "rq", "x2", "p50", "3", "engine", "process", "x2"] in rows
    assert ["engine", "parsl", "x2", "throughput", "0.5", "engine", "process", "x2"] in rows
    alone = Figures()
    alone.add(ENGINES, FXBROKER, "engine rq x2", "p50", 3.0, unit="ms", better="lower")
    assert all(math.isnan(r.ratio) for r in engine_ratios(alone))
    assert "engine / process engine" not in render(Figures(), targets(Figures()), header="h")


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def _figures(fx_throughput: float, fx_p50: float) -> Figures:
    """Medians that meet every target exactly at its threshold for ``(3000.0, 1.5)``."""
    f = Figures()
    tp = "throughput"
    f.add(tp, FXBROKER, "Executor, process x2", tp, fx_throughput, unit="/s", better="higher")
    f.add("latency", FXBROKER, "AsyncClient (push)", "p50", fx_p50, unit="ms", better="lower")
    f.add("latency", FXBROKER, "AsyncClient (push)", "p99", 2.0, unit="ms", better="lower")
    f.add("latency", FXBROKER, "Client (long poll)", "p50", 3.0, unit="ms", better="lower")
    for peer, throughput, p50, p99, mb_s in (("ProcessPoolExecutor", 4000.0, 0.3, 0.5, 900.0),
                                             ("celery", 300.0, 4.0, 4.0, 50.0),
                                             ("rq", 400.0, 3.0, 5.0, 80.0),
                                             ("arq", 600.0, 6.0, 9.0, 70.0)):  # fmt: skip
        f.add(tp, peer, "x2", tp, throughput - 10, unit="/s", better="higher")
        f.add(tp, peer, "x2", tp, throughput, unit="/s", better="higher")
        f.add(tp, peer, "x2", tp, throughput + 1000, unit="/s", better="higher")
        f.add("latency", peer, "x2", "p50", p50, unit="ms", better="lower")
        f.add("latency", peer, "x2", "p99", p99, unit="ms", better="lower")
        f.add("payload", peer, "x2", tp, mb_s, unit="MB/s", better="higher")
    f.add("payload", FXBROKER, "Executor, process x2", tp, 80.0, unit="MB/s", better="higher")
    f.add("seed", FXBROKER, "Executor, thread x64", "wall", 1.1, unit="s", better="lower")
    f.add("async", FXBROKER, "AsyncClient, 1,000 slots", "wall", 1.4, unit="s", better="lower")
    f.add("async", FXBROKER, "AsyncClient, 10,000 slots", "wall", 2.0, unit="s", better="lower")
    f.add("submission", FXBROKER, "Client.batch_run", "accepted", 50_000, unit="/s",
          better="higher")  # fmt: skip
    f.add("submission", FXBROKER, "Client.batch_run", "memory", 501, unit="B", better="lower")
    f.add("fan-out", FXBROKER, "200 AsyncClients x 50", "wall", 3.0, unit="s", better="lower")
    for style, row in DEMO_STYLES.items():
        bench = {"Executor, process x2": fx_throughput}.get(row, 1000.0)
        f.add(tp, FXBROKER, row, tp, bench, unit="/s", better="higher")
        f.add("demo", FXBROKER, style, tp, bench / 2, unit="/s", better="higher")
    return f


def test_targets_compare_medians_with_the_best_broker_peer() -> None:
    found = targets(_figures(3000.0, 1.5))
    assert len(found) == TARGETS
    verdicts = {t.name: t for t in found}
    fastest = verdicts["throughput (Executor, process x2) >= 5x the fastest broker peer"]
    assert fastest.threshold == 5 * 600.0 and fastest.passed and "arq" in fastest.note
    pool = verdicts["throughput (Executor, process x2) >= 0.5x bare ProcessPoolExecutor"]
    assert pool.threshold == 2000.0 and pool.passed
    p50 = verdicts["AsyncClient round trip p50 <= 0.5x the best broker peer's"]
    assert p50.threshold == 1.5 and p50.passed and "rq" in p50.note
    p99 = verdicts["AsyncClient round trip p99 <= 0.5x the best broker peer's"]
    assert p99.threshold == 2.0 and p99.passed and "celery" in p99.note
    long_poll = verdicts["Client round trip (long poll) p50 <= the best broker peer's"]
    assert long_poll.threshold == 3.0 and long_poll.passed
    assert verdicts["submission accepted"].passed
    assert not verdicts["submission Redis memory per queued no-op"].passed
    assert verdicts["seed example (50 x sleep 1 s) wall"].passed
    assert not verdicts["1,000 async sleep(1) tasks wall"].passed
    assert verdicts["10,000 async sleep(1) tasks, max_concurrency 10,000, wall"].passed
    assert verdicts["fan-out (200 AsyncClients x 50) wall"].passed
    payload = verdicts["payload (200 x 1 MiB in, 1 MiB out) >= the best broker peer"]
    assert payload.threshold == 80.0 and payload.passed and "rq" in payload.note
    demo = [t for t in found if t.name.startswith("fxbroker demo")]
    assert len(demo) == len(DEMO_STYLES) and all(t.passed and t.value == 2.0 for t in demo)

    slower = {t.name: t.passed for t in targets(_figures(2999.0, 1.6))}
    assert not slower["throughput (Executor, process x2) >= 5x the fastest broker peer"]
    assert not slower["AsyncClient round trip p50 <= 0.5x the best broker peer's"]


def test_every_target_fails_when_nothing_was_measured() -> None:
    found = targets(Figures())
    assert len(found) == TARGETS
    assert not any(t.passed for t in found)
    assert all(math.isnan(t.value) for t in found)
    assert "no broker peer" in found[0].note
    table = render(Figures(), found, header="h")
    assert table.count("(not measured in this run)") == TARGETS


def test_the_wide_async_row_names_the_wide_agents_slots() -> None:
    assert ASYNC_WIDE_ROW == f"AsyncClient, {fx.WIDE_SLOTS:,} slots"


def test_demo_within_2x_either_way() -> None:
    assert times_apart(100.0, 200.0) == times_apart(200.0, 100.0) == 2.0
    for missing in ((0.0, 100.0), (100.0, 0.0), (math.nan, 100.0), (100.0, math.nan)):
        assert math.isnan(times_apart(*missing))
    f = _figures(3000.0, 1.5)
    f.add("demo", FXBROKER, "Executor: map", "throughput", 1.0, unit="/s", better="higher")
    f.add("demo", FXBROKER, "Executor: map", "throughput", 1.0, unit="/s", better="higher")
    executor = next(t for t in targets(f) if "'Executor: map'" in t.name)
    assert not executor.passed and executor.value == 3000.0  # median 1 task/s vs 3,000


def test_parse_rates_reads_the_demo_table() -> None:
    lines = [Row("Client: batch_run + polling", 1000, 0.5, True).line(),
             Row("AsyncClient: gather of run()", 1000, 0.25, True).line(),
             Row("Executor: map", 1000, 2.0, False).line(),
             Row("Executor: a function that raises", 1, 0.0, True).line()]  # fmt: skip
    rates = parse_rates("platform up\n\n" + "\n".join(lines) + "\n\ndemo FAILED\n")
    assert rates == {"Client: batch_run + polling": 2000.0, "AsyncClient: gather of run()": 4000.0}


def test_render_shows_ratios_fxbroker_over_peer() -> None:
    figures = _figures(3000.0, 1.5)
    table = render(figures, targets(figures), header="h")
    ratio_line = next(line for line in table.splitlines() if line.startswith("throughput  Ex"))
    assert ratio_line.split()[-4:] == ["0.75", "10.0", "7.5", "5"]
    payload_line = next(
        line for line in table.splitlines() if line.split()[:2] == ["payload", "Executor,"]
    )
    assert payload_line.split()[-4:] == ["0.0889", "1.6", "1", "1.14"]
    assert "PASS  submission accepted: 50,000 tasks/s >= 50,000" in table
    assert "FAIL  submission Redis memory per queued no-op: 501.0 bytes <= 500.0" in table
