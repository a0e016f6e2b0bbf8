"""The sample functions ``fxbroker demo`` runs. Kept import-light: worker processes load it."""

from __future__ import annotations

import asyncio


def square(x: int) -> int:
    """A plain ``def`` function: runs in the agent's worker pool."""
    return x * x


async def async_double(x: int) -> int:
    """An ``async def`` function: runs in the agent's event loop."""
    await asyncio.sleep(0)
    return 2 * x


def fail(x: int) -> int:
    """Raises on the endpoint; the caller gets TaskFailed with the remote traceback."""
    raise ValueError(f"cannot handle {x}")
