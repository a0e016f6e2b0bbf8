"""The in-process LRU cache behind auth and the submit hot path."""

from __future__ import annotations

from web_service.cache import LRUCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_goes_first() -> None:
    cache: LRUCache[str, int] = LRUCache(max_items=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_weight_bound() -> None:
    cache: LRUCache[str, str] = LRUCache(max_items=10, max_weight=5, weigh=len)
    cache.put("a", "xxx")
    cache.put("b", "yy")
    cache.put("c", "z")
    assert cache.get("a") is None
    assert (cache.get("b"), cache.get("c")) == ("yy", "z")
    cache.put("huge", "x" * 6)
    assert cache.get("huge") is None
    assert len(cache) == 2


def test_entries_expire() -> None:
    clock = Clock()
    cache: LRUCache[str, int] = LRUCache(max_items=10, ttl_s=10.0, clock=clock)
    cache.put("a", 1)
    clock.now = 9.9
    assert cache.get("a") == 1
    clock.now = 10.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_replacing_a_key_keeps_the_weight_right() -> None:
    cache: LRUCache[str, str] = LRUCache(max_items=10, max_weight=4, weigh=len)
    cache.put("a", "xxxx")
    cache.put("a", "y")
    cache.put("b", "zzz")
    assert (cache.get("a"), cache.get("b")) == ("y", "zzz")
