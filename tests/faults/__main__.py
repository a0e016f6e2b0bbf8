"""``python -m tests.faults [pytest args]``: run the fault tests, then print their figures as
the table of issue 10 (from ``tests/faults/results/faults.json``).

``python -m tests.faults --table`` prints the table of the last run without running anything.
Run from the repository root, with ``REDIS_URL`` / ``DATABASE_URL`` set as for the suite.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.faults.run import RESULTS

COLUMNS = (
    "fault", "style", "submitted", "completed once", "duplicated", "lost", "raised / failed",
    "re-runs (lapsed leases)", "recovery", "dead after",
)  # fmt: skip


def table(rows: dict[str, Any]) -> str:
    """The rows as a Markdown table: one line per fault and client style."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for fault, row in rows.items():
        dead = ", ".join(f"{k} ({v})" for k, v in row["dead_after"].items()) or "none"
        for s in row["styles"]:
            recovery = "-" if s["recovery_s"] is None else f"{s['recovery_s']:.2f} s"
            cells = [
                fault, s["style"], f"{s['submitted']} of {s['submitted'] + s['unsent']}",
                s["right"], s["duplicated"], s["lost"],
                f"{s['raised']} / {s['failed']}", f"{s['reruns']} ({s['lapsed']})", recovery,
                dead,
            ]  # fmt: skip
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if row.get("notes"):
            lines.append(f"| {fault} | notes: {json.dumps(row['notes'])} |" + " |" * 8)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = RESULTS / "faults.json"
    status = 0
    if argv[:1] != ["--table"]:
        import pytest

        path.unlink(missing_ok=True)
        status = int(pytest.main(["-q", "-p", "no:cacheprovider", "tests/faults", *argv]))
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no figures: {path} was not written", file=sys.stderr)
        return status or 1
    print(table(rows))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
