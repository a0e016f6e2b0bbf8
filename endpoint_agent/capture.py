"""What a task prints: ``sys.stdout`` and ``sys.stderr`` captured per task, bounded.

:func:`install` replaces ``sys.stdout`` and ``sys.stderr`` with proxies that write to the
capture of the task running in the current context (a :mod:`contextvars` variable), and to
the original stream otherwise. One mechanism serves every engine: a worker process runs one
task at a time, a worker thread has a context of its own, and each ``async def`` task runs
in the copy of the context its asyncio task was created with, so tasks running side by side
never see each other's output. Only Python-level writes are captured; output a C extension
writes straight to file descriptor 1 or 2 is not.

Each stream keeps its first ``limit`` characters and counts the rest, ending with a line
that says how many characters were dropped.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

TRUNCATED = "\n[fxbroker: {dropped} more characters were not kept]\n"


@dataclass(slots=True)
class BoundedText:
    """Text written to it, up to ``limit`` characters; the rest is only counted."""

    limit: int
    _parts: list[str] = field(default_factory=list)
    _kept: int = 0
    _dropped: int = 0

    def write(self, text: str) -> None:
        room = self.limit - self._kept
        if room > 0:
            piece = text[:room]
            self._parts.append(piece)
            self._kept += len(piece)
        self._dropped += max(0, len(text) - max(room, 0))

    def getvalue(self) -> str:
        text = "".join(self._parts)
        if self._dropped:
            text += TRUNCATED.format(dropped=self._dropped)
        return text


@dataclass(slots=True)
class Captured:
    """The output of one task: its bounded stdout and stderr."""

    stdout: BoundedText
    stderr: BoundedText


_current: contextvars.ContextVar[Captured | None] = contextvars.ContextVar(
    "fxbroker_captured", default=None
)


class _Proxy(io.TextIOBase):
    """Stands in for ``sys.stdout`` / ``sys.stderr``: routes writes to the task's capture."""

    def __init__(self, original: TextIO, name: str) -> None:
        super().__init__()
        self.original = original
        self._name = name

    def _target(self) -> BoundedText | None:
        captured = _current.get()
        if captured is None:
            return None
        return captured.stdout if self._name == "stdout" else captured.stderr

    def write(self, text: str) -> int:
        target = self._target()
        if target is None:
            return self.original.write(text)
        target.write(text)
        return len(text)

    def flush(self) -> None:
        if self._target() is None:
            self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    def fileno(self) -> int:
        return self.original.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


_lock = threading.Lock()
_installed = 0
_saved: tuple[TextIO, TextIO] | None = None


def install() -> None:
    """Route ``sys.stdout``/``sys.stderr`` through the capture proxies (counted: every
    :func:`install` needs an :func:`uninstall`; the last one restores the streams)."""
    global _installed, _saved
    with _lock:
        if _installed == 0:
            _saved = (sys.stdout, sys.stderr)
            sys.stdout = _Proxy(sys.stdout or io.StringIO(), "stdout")
            sys.stderr = _Proxy(sys.stderr or io.StringIO(), "stderr")
        _installed += 1


def uninstall() -> None:
    global _installed, _saved
    with _lock:
        _installed -= 1
        if _installed == 0 and _saved is not None:
            sys.stdout, sys.stderr = _saved
            _saved = None


class Capture:
    """``with Capture(limit) as captured``: what the code inside prints, in this context only.

    A class rather than a ``contextlib.contextmanager`` generator: it is entered once per
    task, and a generator's setup was a twentieth of an ``async def`` task's agent time."""

    __slots__ = ("_captured", "_token")

    def __init__(self, limit: int) -> None:
        self._captured = Captured(BoundedText(limit), BoundedText(limit))

    def __enter__(self) -> Captured:
        self._token = _current.set(self._captured)
        return self._captured

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)
