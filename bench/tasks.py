"""The functions every system runs: the same no-op and payload echo everywhere, and the sleeps.

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


def echo(data: bytes) -> bytes:
    """The payload task: its argument back, so the bytes cross the system both ways."""
    return data


async def async_echo(ctx: dict[str, Any] | None, data: bytes) -> bytes:
    """The payload task for arq (``ctx`` is arq's job context)."""
    return data
