"""The functions every system runs: the same no-op everywhere, and the seed's sleeps.

Kept import-light: worker processes of every peer (and fxbroker's process engine) import
this module to find the functions by name.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def noop() -> None:
    """The no-op task: returns at once, so what is measured is the system around it."""


async def async_noop(ctx: dict[str, Any] | None = None) -> None:
    """The no-op for arq, which runs only coroutines (``ctx`` is arq's job context)."""


def sleep_1s() -> None:
    """The seed example's task: sleep one second in a worker."""
    time.sleep(1.0)


async def async_sleep_1s() -> None:
    """An ``async def`` task awaiting a one-second sleep in the agent's event loop."""
    await asyncio.sleep(1.0)
