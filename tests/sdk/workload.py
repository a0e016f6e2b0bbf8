"""Functions the SDK tests run on an endpoint."""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def scale(x: int, *, by: int = 1) -> int:
    return x * by


def fail(message: str) -> None:
    raise ValueError(message)


async def async_add(a: int, b: int = 0) -> int:
    return a + b


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def echo(x: int) -> int:
    print(f"echo {x}")
    return x
