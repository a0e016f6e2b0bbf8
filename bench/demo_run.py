"""``fxbroker demo`` run inside the bench, so the tasks/s it prints can be held against the
bench's own figure for the same client style.

The demo is run as a user runs it (``python -m fxbroker.cli demo``): its own home folder, its
own Redis and SQL (no ``REDIS_URL`` or ``DATABASE_URL`` passed on), its web, ws and agent in
one process. What it prints is parsed by :func:`parse_rates`, pure code.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from bench.report import DEMO_STYLES, FXBROKER, Figures
from bench.services import PYTHON, REPO_ROOT, python_env
from bench.settings import BenchSettings

_ROW = re.compile(r"^\s+(?P<style>\S.*?)\s+(?P<tasks>\d+)\s+[\d.]+\s+(?P<rate>\d+)\s+ok\s*$")
_PRIVATE = ("REDIS_URL", "DATABASE_URL")


def parse_rates(stdout: str) -> dict[str, float]:
    """tasks/s of each known client style in the demo's table (rows marked ``ok`` only)."""
    rates: dict[str, float] = {}
    for line in stdout.splitlines():
        match = _ROW.match(line)
        if match and match["style"] in DEMO_STYLES:
            rates[match["style"]] = float(match["rate"])
    return rates


def demo(figures: Figures, workdir: Path, s: BenchSettings) -> None:
    """Run ``fxbroker demo --tasks demo_tasks`` once and record the tasks/s of each style.

    Raises when the demo fails or a style is missing from its table, so a figure is never
    made of a broken demo."""
    env = {k: v for k, v in python_env().items() if k not in _PRIVATE}
    env = {k: v for k, v in env.items() if not k.startswith("FXBROKER_")}
    home = Path(tempfile.mkdtemp(prefix="demo-home-", dir=workdir))  # fresh each repeat
    command = [PYTHON, "-m", "fxbroker.cli", "demo", "--web-port", "0", "--ws-port", "0",
               "--home", str(home), "--tasks", str(s.demo_tasks)]  # fmt: skip
    done = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=s.start_timeout_s + s.task_timeout_s,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fxbroker demo failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")  # fmt: skip
    rates = parse_rates(done.stdout)
    missing = sorted(set(DEMO_STYLES) - set(rates))
    if missing:
        raise RuntimeError(f"fxbroker demo printed no tasks/s for {missing}: {done.stdout}")
    for style, rate in rates.items():
        figures.add("demo", FXBROKER, style, "throughput", rate, unit="tasks/s",
                    better="higher")  # fmt: skip
