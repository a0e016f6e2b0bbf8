"""A progress bar for waits on many tasks, drawn only on a terminal.

``Client.wait``, ``AsyncClient.wait``, ``Executor.map`` and ``RemoteFunction.map`` take
``progress=`` (off by default, the same everywhere); with ``progress=True`` they draw one
line on standard error, redrawn in place as tasks finish::

    fxbroker  640/1000 [##############----------]  64%  1 failed

When the stream is not a TTY (a log file, a pipe, CI) nothing at all is written. A small
module of our own rather than a dependency: one line, no nesting, no rate estimates.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 24
REDRAW_S = 0.1
"""At most one redraw per this many seconds (and always the last one)."""


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


class Progress:
    """Counts finished tasks out of ``total`` and draws a bar on ``stream`` if it is a TTY.

    Thread-safe: futures' callbacks may advance it from another thread. Use it as a context
    manager; leaving the block ends the line."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "fxbroker",
    ) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.label = label
        self._stream = sys.stderr if stream is None else stream
        self.visible = enabled and total > 0 and is_terminal(self._stream)
        self._lock = threading.Lock()
        self._drawn_at = 0.0
        self._closed = False

    def advance(self, count: int = 1, *, failed: int = 0) -> None:
        """``count`` more tasks finished, ``failed`` of them with an error."""
        with self._lock:
            self.done = min(self.total, self.done + count)
            self.failed += failed
            now = time.monotonic()
            if self.done == self.total or now - self._drawn_at >= REDRAW_S:
                self._draw(now)

    def update(self, done: int, *, failed: int = 0) -> None:
        """Set how many tasks have finished (``failed`` of them with an error)."""
        with self._lock:
            changed = (done, failed) != (self.done, self.failed)
            self.done, self.failed = min(self.total, done), failed
            now = time.monotonic()
            if changed and (self.done == self.total or now - self._drawn_at >= REDRAW_S):
                self._draw(now)

    def render(self) -> str:
        """The line as drawn (without the carriage return)."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        width = len(str(self.total))
        line = (
            f"{self.label} {self.done:>{width}}/{self.total} "
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction:>4.0%}"
        )
        if self.failed:
            line += f"  {self.failed} failed"
        return line

    def _draw(self, now: float) -> None:
        if not self.visible or self._closed:
            return
        self._drawn_at = now
        self._stream.write("\r" + self.render())
        self._stream.flush()

    def close(self) -> None:
        """Draw the last state and end the line."""
        with self._lock:
            if self._closed:
                return
            self._draw(time.monotonic())
            self._closed = True
            if self.visible:
                self._stream.write("\n")
                self._stream.flush()

    def __enter__(self) -> Progress:
        with self._lock:
            self._draw(time.monotonic())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
