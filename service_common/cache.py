"""A small in-process cache: bounded, least-recently-used first out, optionally expiring.

The services keep in it, for a bounded time, what a request needs to know and rarely
changes: in the web service a function's owner, sharing and code, an endpoint's owner,
shares and allow-list, a task group's owner, who a token belongs to; in the ws service the
web service's positive answers about tokens and task groups. Each process has its own;
nothing here is shared or persisted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``max_items`` entries and ``max_weight`` total weight (``weigh`` of each value).

    With ``ttl_s`` an entry is forgotten that many seconds after it was stored; with
    ``ttl_s <= 0`` (entries that would expire at once) or ``max_items < 1`` nothing is
    stored. An entry heavier than ``max_weight`` is never stored.
    """

    def __init__(
        self,
        *,
        max_items: int,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[K, tuple[V, float, int]] = OrderedDict()
        self._max_items = max_items
        self._max_weight = max_weight
        self._weigh = weigh
        self._ttl_s = ttl_s
        self._clock = clock
        self._weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at, _ = entry
        if self._ttl_s is not None and self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if key in self._entries:
            self._drop(key)
        weight = self._weigh(value) if self._weigh is not None else 0
        if (
            self._max_items < 1
            or (self._ttl_s is not None and self._ttl_s <= 0)
            or (self._max_weight is not None and weight > self._max_weight)
        ):
            return
        expires_at = self._clock() + self._ttl_s if self._ttl_s is not None else 0.0
        self._entries[key] = (value, expires_at, weight)
        self._weight += weight
        while len(self._entries) > self._max_items or (
            self._max_weight is not None and self._weight > self._max_weight
        ):
            self._drop(next(iter(self._entries)))

    def forget(self, key: K) -> None:
        """Drop ``key`` if it is cached (after the value it stands for changed)."""
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: K) -> None:
        _, _, weight = self._entries.pop(key)
        self._weight -= weight
