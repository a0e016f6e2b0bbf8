"""One row of the fault table: both client styles under load, one fault in the middle, and
the figures that say what held.

:func:`drive` starts both loads, waits for a condition (each style has ``trigger`` results
in), calls the fault (which kills a piece, waits :data:`DOWN_S` and starts it again, and
returns when it was back), then waits for both loads up to their deadline and counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.load import ExecutorLoad, PollingLoad, StyleFigures, count_duplicates_and_reruns
from tests.faults.platform import Platform

DOWN_S = 1.5
"""How long a faulted piece stays down before it is started again (the issue's figure)."""
TRIGGER_TIMEOUT_S = 120.0
RESULTS = Path(__file__).resolve().parent / "results"
"""Where each row's figures are written (``faults.json``; the folder is ignored by git)."""


@dataclass
class Row:
    """The figures of one fault."""

    fault: str
    tasks_per_style: int
    fault_at_s: float = 0.0
    """From the start of the loads to the fault."""
    down_s: float = 0.0
    """From the fault until the piece was back (listening, for a server)."""
    styles: list[StyleFigures] = field(default_factory=list)
    dead_after: dict[str, int | None] = field(default_factory=dict)
    """Platform processes not running after the row (name -> exit status)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the row measured besides the loads (the PostgreSQL row's probes, for one)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "tasks_per_style": self.tasks_per_style,
            "fault_at_s": round(self.fault_at_s, 2),
            "down_s": round(self.down_s, 2),
            "styles": [s.as_dict() for s in self.styles],
            "dead_after": self.dead_after,
            "notes": self.notes,
        }

    def line(self) -> str:
        """One line a person reads: per style, submitted / right / duplicated / lost."""
        parts = [f"{self.fault}: fault at {self.fault_at_s:.1f}s, down {self.down_s:.1f}s"]
        for s in self.styles:
            recovery = "-" if s.recovery_s is None else f"{s.recovery_s:.2f}s"
            parts.append(
                f"{s.style} submitted {s.submitted} (unsent {s.unsent}) right {s.right} "
                f"duplicated {s.duplicated} "
                f"lost {s.lost} raised {s.raised} failed {s.failed} reruns {s.reruns} "
                f"(lapsed leases {s.lapsed}) client errors {s.client_errors} "
                f"recovery {recovery}"
            )
        dead = ", ".join(f"{k} ({v})" for k, v in self.dead_after.items()) or "none"
        parts.append(f"dead after: {dead}")
        if self.notes:
            parts.append(json.dumps(self.notes))
        return " | ".join(parts)


def drive(
    platform: Platform,
    *,
    fault: str,
    inject: Callable[[], float],
    redis_url: str,
    runs_dir: Path,
    n: int,
    window: int,
    trigger: int,
    deadline_s: float,
    hold_s: float = 0.0,
) -> Row:
    """Run both styles (``n`` tasks each, each task taking ``hold_s``), call ``inject`` once
    each has ``trigger`` results, and count. ``inject`` returns the monotonic time at which
    the faulted piece was back."""
    row = Row(fault, n)
    begun = time.monotonic()
    deadline = begun + deadline_s
    runs = str(runs_dir / "runs.txt")
    loads = [
        ExecutorLoad(platform, runs=runs, n=n, window=window, deadline=deadline, hold_s=hold_s),
        PollingLoad(platform, runs=runs, n=n, window=window, deadline=deadline, hold_s=hold_s),
    ]
    for load in loads:
        load.start()
    try:
        trigger_by = time.monotonic() + TRIGGER_TIMEOUT_S
        while min(load.completed() for load in loads) < trigger:
            if time.monotonic() > trigger_by:
                raise TimeoutError(
                    f"no {trigger} results in each style within {TRIGGER_TIMEOUT_S:g} s "
                    f"({[load.completed() for load in loads]}); see {platform.log}"
                )
            time.sleep(0.01)
        faulted = time.monotonic()
        row.fault_at_s = faulted - begun
        row.notes["submitted_at_fault"] = {load.figures.style: load.handed for load in loads}
        back = inject()
        row.down_s = back - faulted
    finally:
        for load in loads:
            load.join()
    for load in loads:
        count_duplicates_and_reruns(
            platform, load.figures, task_group_id=load.task_group_id, task_of=load.task_of,
            runs=runs, tag=load.tag, redis_url=redis_url,
        )  # fmt: skip
        load.figures.recovery_s = load.first_result_after(back)
        row.styles.append(load.figures)
    row.dead_after = platform.dead_pieces()
    return row


def save(rows: list[Row], path: Path = RESULTS / "faults.json") -> Path:
    """Merge ``rows`` into the JSON file (a row replaces an earlier one of the same fault)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    for row in rows:
        known[row.fault] = row.as_dict()
    path.write_text(json.dumps(known, indent=2) + "\n")
    return path
