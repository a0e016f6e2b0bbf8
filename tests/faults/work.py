"""The function the fault tests run on the endpoint. Kept import-light: worker processes load it.

Each run appends one line ``<tag> <x>`` to the file ``runs`` names (a file in a folder the
test shares with the agent), so a task run twice shows up as two lines however its result
travelled. One short ``write`` to a file opened for appending lands whole, so lines from
several worker processes never interleave.
"""

from __future__ import annotations

import os
import time


def record_square(tag: str, x: int, runs: str, hold_s: float = 0.0) -> int:
    """``x * x``, after writing ``tag x`` as one line to ``runs`` and then taking ``hold_s``
    seconds (a task that is surely still running when its agent is killed)."""
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {x}\n".encode())
    finally:
        os.close(fd)
    if hold_s > 0:
        time.sleep(hold_s)
    return x * x


def count_runs(runs: str) -> dict[tuple[str, int], int]:
    """How often each ``(tag, x)`` ran, from the lines :func:`record_square` wrote."""
    counts: dict[tuple[str, int], int] = {}
    try:
        with open(runs) as f:
            for line in f:
                tag, x = line.split()
                key = (tag, int(x))
                counts[key] = counts.get(key, 0) + 1
    except FileNotFoundError:
        pass
    return counts
