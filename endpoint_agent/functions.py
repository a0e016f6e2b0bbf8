"""Which function a task calls: code fetched once per function id, loaded, and classified.

The agent must know whether a function is ``async def`` (it runs in the event loop) or
``def`` (it runs in a worker) before it can dispatch a task, so it loads each function once
in its own process (:func:`~endpoint_agent.worker.load_function`, cached by id). The code
buffer is kept as well: process workers receive it with each call and load it once each.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from endpoint_agent.stream import TaskStream
from endpoint_agent.worker import CACHE_SIZE, describe, load_function
from sdk.errors import DeserializationError
from sdk.messages import ExceptionRecord, error_record

FUNCTION_NOT_FOUND = "FunctionNotFound"


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A loaded function: its id, its code buffer, the callable, and whether it is async."""

    function_id: str
    code: str
    fn: Callable[..., Any]
    is_async: bool


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions (and objects whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we ask about __call__ itself
    )


class FunctionCatalog:
    """Resolves function ids to :class:`FunctionInfo`, one code fetch per unknown id."""

    def __init__(self, stream: TaskStream, *, allowed: frozenset[str] | None) -> None:
        self._stream = stream
        self._allowed = allowed
        self._known: dict[str, FunctionInfo] = {}

    async def resolve(
        self, function_ids: Iterable[str]
    ) -> dict[str, FunctionInfo | ExceptionRecord]:
        """Each id's function, or the record of why it cannot run (missing or bad code).

        Unknown ids are fetched in one pipelined round trip; failures are not cached, so a
        function whose code is stored later is found then."""
        wanted = list(dict.fromkeys(function_ids))
        found: dict[str, FunctionInfo | ExceptionRecord] = {
            fid: self._known[fid] for fid in wanted if fid in self._known
        }
        codes = await self._stream.fetch_code(fid for fid in wanted if fid not in found)
        for fid, code in codes.items():
            found[fid] = self._load(fid, code)
        return found

    def _load(self, function_id: str, code: str | None) -> FunctionInfo | ExceptionRecord:
        if code is None:
            return error_record(FUNCTION_NOT_FOUND, f"no code is stored for function {function_id}")
        try:
            fn = load_function(function_id, code, allowed=self._allowed)
        except DeserializationError as exc:
            return describe(exc)
        info = FunctionInfo(function_id, code, fn, is_async_callable(fn))
        if len(self._known) >= CACHE_SIZE:
            del self._known[next(iter(self._known))]
        self._known[function_id] = info
        return info
