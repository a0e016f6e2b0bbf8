"""Which function a task calls: code fetched once per function id, loaded, classified, and
checked against the allow-lists.

The agent must know whether a function is ``async def`` (it runs in the event loop) or
``def`` (it runs in a worker) before it can dispatch a task, so it loads each function once
in its own process (:func:`~endpoint_agent.worker.load_function`, cached by id). The code
buffer is kept as well: process workers receive it with each call and load it once each.

Two allow-lists apply, and a function must pass both: the endpoint's, mirrored into Redis
by the web service (asked again on every read, so a change applies to the next read), and
the agent's own ``allowed_functions`` setting. A refused function fails its task with
``FunctionNotAllowed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from endpoint_agent.worker import (
    CACHE_SIZE,
    FUNCTION_NOT_ALLOWED,
    FUNCTION_NOT_FOUND,
    describe,
    load_function,
)
from sdk.errors import DeserializationError
from sdk.messages import ExceptionRecord, error_record
from service_common.tasks.stream import Lookup


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A loaded function: its id, its code buffer, the callable, and whether it is async."""

    function_id: str
    code: str
    fn: Callable[..., Any]
    is_async: bool


LookupFn = Callable[[Iterable[str], Iterable[str]], Awaitable[Lookup]]
"""``lookup(fetch, check)``: the code of the ``fetch`` ids and which ``check`` ids the
endpoint's allow-list refuses (the Redis transport asks Redis, in one round trip)."""

Resolved = dict[str, FunctionInfo | ExceptionRecord]


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions (and objects whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we ask about __call__ itself
    )


class FunctionCatalog:
    """Resolves function ids to :class:`FunctionInfo`, one round trip per resolve."""

    def __init__(
        self,
        lookup: LookupFn,
        *,
        allowed: frozenset[str] | None,
        allowed_functions: frozenset[str] | None = None,
    ) -> None:
        self._lookup = lookup
        self._allowed = allowed
        self._allowed_functions = allowed_functions
        self._known: dict[str, FunctionInfo] = {}

    async def resolve(self, function_ids: Iterable[str]) -> Resolved:
        """Each id's function, or the record of why it cannot run (not allowed, missing or
        bad code).

        Unknown ids are fetched in the same pipelined round trip that asks the endpoint's
        allow-list; failures are not cached, so a function whose code is stored later is
        found then."""
        wanted = list(dict.fromkeys(function_ids))
        if not wanted:
            return {}
        found: dict[str, FunctionInfo | ExceptionRecord] = {}
        for fid in wanted:
            if self._allowed_functions is not None and fid not in self._allowed_functions:
                found[fid] = _not_allowed(fid, "this agent's allowed_functions")
        check = [fid for fid in wanted if fid not in found]
        lookup = await self._lookup((fid for fid in check if fid not in self._known), check)
        for fid in check:
            if fid in lookup.refused:
                found[fid] = _not_allowed(fid, "the endpoint's allow-list")
            elif fid in self._known:
                found[fid] = self._known[fid]
            else:
                found[fid] = self._load(fid, lookup.codes.get(fid))
        return found

    def known(self, function_id: str) -> FunctionInfo | None:
        """The function ``function_id`` when it is loaded already."""
        return self._known.get(function_id)

    def load(self, function_id: str, code: str | None) -> FunctionInfo | ExceptionRecord:
        """Load (or find loaded) ``function_id`` from ``code``, applying the agent's own
        ``allowed_functions`` and ``allowed_strategies``; the record of why it cannot run."""
        if self._allowed_functions is not None and function_id not in self._allowed_functions:
            return _not_allowed(function_id, "this agent's allowed_functions")
        known = self._known.get(function_id)
        return known if known is not None else self._load(function_id, code)

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


def _not_allowed(function_id: str, where: str) -> ExceptionRecord:
    return error_record(
        FUNCTION_NOT_ALLOWED, f"function {function_id} is not in {where}; the task was not run"
    )
