"""Fixtures of the fault tests, and the table they print at the end of the session.

Each test records its :class:`~tests.faults.run.Row` with the ``fault_rows`` fixture, which
also writes it to ``tests/faults/results/faults.json`` at once (a test that fails still leaves
its figures). The terminal summary prints one line per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.run import Row, save

ROWS = pytest.StashKey[list[Row]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: kills and restarts real platform processes (tests/faults)"
    )


@pytest.fixture
def fault_rows(request: pytest.FixtureRequest) -> Iterator[Callable[[Row], None]]:
    """``record(row)``: keep the row for the summary and write it to the results file."""
    rows = request.config.stash.setdefault(ROWS, [])

    def record(row: Row) -> None:
        rows.append(row)
        save([row])
        print(row.line())

    yield record


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A folder the test shares with the agent: the runs file lives here."""
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault table (tests/faults)")
    for row in rows:
        terminalreporter.write_line(row.line())
