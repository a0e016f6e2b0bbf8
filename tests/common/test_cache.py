"""The in-process LRU cache behind auth, the submit hot path and the ws service's answers."""

from __future__ import annotations

from service_common.cache import LRUCache


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


def test_a_ttl_of_zero_or_less_keeps_nothing() -> None:
    for ttl_s in (0.0, -1.0):
        cache: LRUCache[str, str] = LRUCache(max_items=10, ttl_s=ttl_s, clock=Clock())
        cache.put("k", "v")
        assert (cache.get("k"), len(cache)) == (None, 0)


def test_replacing_with_an_unstorable_value_forgets_the_old_one() -> None:
    cache: LRUCache[str, str] = LRUCache(max_items=10, max_weight=3, weigh=len)
    cache.put("a", "xx")
    cache.put("a", "xxxx")
    assert (cache.get("a"), len(cache)) == (None, 0)


def test_bounded_by_items_least_recently_used_first_with_a_ttl() -> None:
    clock = Clock()
    cache: LRUCache[int | str, int | str] = LRUCache(max_items=100, ttl_s=30.0, clock=clock)
    for i in range(100):
        cache.put(i, i)
    assert cache.get(0) == 0  # now the most recently used
    cache.put("new", "new")
    assert cache.get(1) is None
    assert (cache.get(0), cache.get("new"), len(cache)) == (0, "new", 100)
    cache.forget(0)
    assert (cache.get(0), len(cache)) == (None, 99)
