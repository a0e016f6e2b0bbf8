"""Figures, the table they are printed as, the targets, and the JSON they are written to.

Pure code: nothing here measures or starts anything. A :class:`Figure` is one number of one
system on one workload, one sample per repeat; what is printed is the median of the samples.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]

FXBROKER = "fxbroker"
POOL = "ProcessPoolExecutor"
BROKER_PEERS = ("celery", "rq", "arq")
PEERS = (POOL, *BROKER_PEERS)


@dataclass
class Figure:
    """One figure of one system on one workload; ``samples`` holds one value per repeat."""

    workload: str
    system: str
    variant: str
    metric: str
    unit: str
    better: Better
    samples: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        """The median of the samples (NaN when there are none)."""
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.workload, self.system, self.variant, self.metric)

    @property
    def label(self) -> str:
        return f"{self.system} {self.variant}".strip()


@dataclass(frozen=True)
class Target:
    """One claim of the issue, checked against the medians."""

    name: str
    value: float
    threshold: float
    unit: str
    op: Literal[">=", "<="]
    passed: bool
    note: str = ""


class Figures:
    """Every figure of a run, in the order first recorded."""

    def __init__(self) -> None:
        self._figures: dict[tuple[str, str, str, str], Figure] = {}

    def add(
        self,
        workload: str,
        system: str,
        variant: str,
        metric: str,
        value: float,
        *,
        unit: str,
        better: Better,
    ) -> None:
        key = (workload, system, variant, metric)
        figure = self._figures.get(key)
        if figure is None:
            figure = self._figures[key] = Figure(workload, system, variant, metric, unit, better)
        figure.samples.append(value)

    def __iter__(self) -> Iterator[Figure]:
        return iter(self._figures.values())

    def get(self, workload: str, system: str, variant: str, metric: str) -> Figure | None:
        return self._figures.get((workload, system, variant, metric))

    def value(self, workload: str, system: str, variant: str, metric: str) -> float:
        figure = self.get(workload, system, variant, metric)
        return math.nan if figure is None else figure.value

    def fxbroker(self, workload: str, metric: str) -> float:
        """The median of fxbroker's first figure ``metric`` on ``workload`` (NaN if none)."""
        for figure in self._figures.values():
            if (figure.workload, figure.system, figure.metric) == (workload, FXBROKER, metric):
                return figure.value
        return math.nan

    def peers(self, workload: str, metric: str) -> dict[str, float]:
        """The median of ``metric`` for each peer that has it on ``workload``."""
        found: dict[str, float] = {}
        for figure in self._figures.values():
            if figure.workload == workload and figure.metric == metric and figure.system in PEERS:
                found[figure.system] = figure.value
        return found


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- targets -----------------------------------------------------------------------------------

THROUGHPUT_REFERENCE = "Executor, process x2"
"""The fxbroker throughput row the targets use: 2 worker processes, like every peer."""
ASYNC_PUSH_ROW = "AsyncClient (push)"
LONG_POLL_ROW = "Client (long poll)"
ASYNC_ROW = "AsyncClient, 1,000 slots"
ASYNC_WIDE_ROW = "AsyncClient, 10,000 slots"
PAYLOAD_ROW = "Executor, process x2"
DEMO_STYLES = {
    "Client: batch_run + polling": "batch_run + polling, process x2",
    "AsyncClient: gather of run()": "AsyncClient gather, process x2",
    "Executor: map": "Executor, process x2",
}
"""Each client style ``fxbroker demo`` prints, and the bench's throughput row of that style."""
DEMO_WITHIN = 2.0
"""The demo's tasks/s and the bench's may differ by at most this factor either way."""
RATIO_WORKLOADS = ("throughput", "latency", "payload")
ENGINES = "engines"
"""The workload of the engine rows: fxbroker on agents of different engines, no target."""
REFERENCE_ENGINE = "process"
"""The engine the other engines' rows are divided by."""


def engine_variant(engine: str, workers: int) -> str:
    """The variant of ``engine``'s rows (``engine rq x2``)."""
    return f"engine {engine} x{workers}"


def _best_broker(figures: Figures, workload: str, metric: str) -> tuple[str, float]:
    """The broker peer (Celery, RQ, arq) with the best median ``metric``, by the figure's own
    ``better``; ``("no broker peer", NaN)`` when none was measured."""
    found = [f for f in figures if (f.workload, f.metric) == (workload, metric)
             and f.system in BROKER_PEERS and not math.isnan(f.value)]  # fmt: skip
    if not found:
        return "no broker peer", math.nan
    pick = max if found[0].better == "higher" else min
    best = pick(found, key=lambda f: f.value)
    return best.system, best.value


def targets(figures: Figures) -> list[Target]:
    """Issue 12's targets, each PASS or FAIL on the medians; a figure not measured is NaN,
    and NaN FAILs. Every row is always listed, so a run that skipped one shows it failing."""
    found: list[Target] = []
    fx = figures.value("throughput", FXBROKER, THROUGHPUT_REFERENCE, "throughput")
    name, peer = _best_broker(figures, "throughput", "throughput")
    found.append(
        _at_least(
            "throughput (Executor, process x2) >= 5x the fastest broker peer",
            fx,
            5 * peer,
            "tasks/s",
            f"fastest: {name} {fmt(peer)} tasks/s",
        )
    )
    pool = figures.peers("throughput", "throughput").get(POOL, math.nan)
    found.append(
        _at_least(
            "throughput (Executor, process x2) >= 0.5x bare ProcessPoolExecutor",
            fx,
            0.5 * pool,
            "tasks/s",
            f"{POOL}: {fmt(pool)} tasks/s",
        )
    )
    for q in ("p50", "p99"):
        value = figures.value("latency", FXBROKER, ASYNC_PUSH_ROW, q)
        name, peer = _best_broker(figures, "latency", q)
        found.append(
            _at_most(
                f"AsyncClient round trip {q} <= 0.5x the best broker peer's",
                value,
                0.5 * peer,
                "ms",
                f"best: {name} {fmt(peer)} ms",
            )
        )
    value = figures.value("latency", FXBROKER, LONG_POLL_ROW, "p50")
    name, peer = _best_broker(figures, "latency", "p50")
    found.append(
        _at_most(
            "Client round trip (long poll) p50 <= the best broker peer's",
            value,
            peer,
            "ms",
            f"best: {name} {fmt(peer)} ms",
        )
    )
    accepted = figures.fxbroker("submission", "accepted")
    found.append(_at_least("submission accepted", accepted, 50_000, "tasks/s"))
    memory = figures.fxbroker("submission", "memory")
    found.append(_at_most("submission Redis memory per queued no-op", memory, 500, "bytes"))
    seed = figures.fxbroker("seed", "wall")
    found.append(_at_most("seed example (50 x sleep 1 s) wall", seed, 1.10, "s"))
    found.append(
        _at_most(
            "1,000 async sleep(1) tasks wall",
            figures.value("async", FXBROKER, ASYNC_ROW, "wall"),
            1.15,
            "s",
        )
    )
    found.append(
        _at_most(
            "10,000 async sleep(1) tasks, max_concurrency 10,000, wall",
            figures.value("async", FXBROKER, ASYNC_WIDE_ROW, "wall"),
            2.0,
            "s",
        )
    )
    found.append(
        _at_most(
            "fan-out (200 AsyncClients x 50) wall", figures.fxbroker("fan-out", "wall"), 3.0, "s"
        )
    )
    value = figures.value("payload", FXBROKER, PAYLOAD_ROW, "throughput")
    name, peer = _best_broker(figures, "payload", "throughput")
    found.append(
        _at_least(
            "payload (200 x 1 MiB in, 1 MiB out) >= the best broker peer",
            value,
            peer,
            "MB/s",
            f"best: {name} {fmt(peer)} MB/s",
        )
    )
    for style, row in DEMO_STYLES.items():
        demo = figures.value("demo", FXBROKER, style, "throughput")
        bench = figures.value("throughput", FXBROKER, row, "throughput")
        apart = times_apart(demo, bench)
        found.append(
            _at_most(
                f"fxbroker demo {style!r} tasks/s within 2x of the bench's",
                apart,
                DEMO_WITHIN,
                "x",
                f"demo {fmt(demo)}, bench {row!r} {fmt(bench)}",
            )
        )
    return found


def _at_least(name: str, value: float, threshold: float, unit: str, note: str = "") -> Target:
    return Target(name, value, threshold, unit, ">=", value >= threshold, note)


def _at_most(name: str, value: float, threshold: float, unit: str, note: str = "") -> Target:
    return Target(name, value, threshold, unit, "<=", value <= threshold, note)


# -- engine ratios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRatio:
    """One engine's median ``metric`` divided by the process engine's, same workers."""

    variant: str
    metric: str
    reference: str
    ratio: float


def engine_ratios(figures: Figures) -> list[EngineRatio]:
    """Each engine row's median over the process engine row's with as many workers (the
    process row's own ratios, all 1, are left out; NaN where the process row is missing)."""
    found = []
    for f in figures:
        if f.workload != ENGINES or f.system != FXBROKER:
            continue
        engine, _, workers = f.variant.removeprefix("engine ").rpartition(" x")
        reference = engine_variant(REFERENCE_ENGINE, int(workers))
        if engine == REFERENCE_ENGINE:
            continue
        process = figures.value(ENGINES, FXBROKER, reference, f.metric)
        found.append(EngineRatio(f.variant, f.metric, reference, ratio(f.value, process)))
    return found


# -- rendering ---------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def ratio(fx: float, peer: float) -> float:
    """fxbroker / peer (NaN when either is missing or the peer is zero)."""
    if math.isnan(fx) or math.isnan(peer) or peer == 0:
        return math.nan
    return fx / peer


def times_apart(a: float, b: float) -> float:
    """How many times the larger of two positive figures is the smaller (NaN unless both are
    positive), so "within 2x either way" reads ``times_apart(a, b) <= 2``."""
    if not (a > 0 and b > 0):  # also False for NaN
        return math.nan
    return max(a, b) / min(a, b)


def render(figures: Figures, found: Sequence[Target], *, header: str) -> str:
    """The table: every figure, then the ratios fxbroker / peer, then the targets."""
    lines = [header, ""]
    rows: list[tuple[str, ...]] = [("workload", "system", "figure", "median", "samples")]
    for f in figures:
        samples = ", ".join(fmt(s) for s in f.samples)
        rows.append((f.workload, f.label, f"{f.metric} ({f.unit})", fmt(f.value), samples))
    lines += _columns(rows)
    lines += ["", "fxbroker / peer (throughput, payload: > 1 is faster; latency: < 1 is faster)"]
    ratio_rows: list[tuple[str, ...]] = [("workload", "fxbroker", "figure", *PEERS)]
    for f in figures:
        if f.system != FXBROKER or f.workload not in RATIO_WORKLOADS:
            continue
        peer_values = figures.peers(f.workload, f.metric)
        cells = [fmt(ratio(f.value, peer_values.get(p, math.nan))) for p in PEERS]
        ratio_rows.append((f.workload, f.variant, f.metric, *cells))
    lines += _columns(ratio_rows)
    per_engine = engine_ratios(figures)
    if per_engine:
        lines += ["", "engine / process engine (throughput: < 1 is slower; latency: > 1 is slower)"]
        engine_rows: list[tuple[str, ...]] = [("engine", "figure", "ratio", "to")]
        for r in per_engine:
            engine_rows.append((r.variant, r.metric, fmt(r.ratio), r.reference))
        lines += _columns(engine_rows)
    lines += ["", "targets"]
    for t in found:
        verdict = "PASS" if t.passed else "FAIL"
        if math.isnan(t.value) or math.isnan(t.threshold):
            note = "  (not measured in this run)"
        else:
            note = f"  ({t.note})" if t.note else ""
        lines.append(
            f"  {verdict}  {t.name}: {fmt(t.value)} {t.unit} {t.op} {fmt(t.threshold)}{note}"
        )
    return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def to_json(figures: Figures, found: Sequence[Target], *, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the table shows, with every sample, as one JSON-ready dict."""
    rows = []
    for f in figures:
        row = asdict(f)
        row["median"] = None if math.isnan(f.value) else f.value
        rows.append(row)
    ratios = []
    for f in figures:
        if f.system != FXBROKER or f.workload not in RATIO_WORKLOADS:
            continue
        peer_values = figures.peers(f.workload, f.metric)
        for peer, value in peer_values.items():
            r = ratio(f.value, value)
            ratios.append({"workload": f.workload, "variant": f.variant, "metric": f.metric,
                           "peer": peer, "ratio": None if math.isnan(r) else r})  # fmt: skip
    per_engine = [{**asdict(r), "ratio": None if math.isnan(r.ratio) else r.ratio}
                  for r in engine_ratios(figures)]  # fmt: skip
    return {
        **meta,
        "figures": rows,
        "ratios": ratios,
        "engine_ratios": per_engine,
        "targets": [
            {**asdict(t), "value": None if math.isnan(t.value) else t.value} for t in found
        ],
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
