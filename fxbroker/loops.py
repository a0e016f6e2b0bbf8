"""The event loop every long-running fxbroker process runs on: uvloop, a libuv-based loop
that is several times faster than asyncio's own at the many small socket reads and writes
the services and the agent do."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop event loop, for a thread that runs one of its own."""
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
