"""The pure parts of the handshake and retry logic: bearer parsing, the answer cache, backoff."""

from __future__ import annotations

import pytest

from ws_service.auth import CACHE_ENTRIES_MAX, Caller, _TTLCache, bearer_token
from ws_service.server import Backoff


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_cache_keeps_answers_for_its_ttl_only() -> None:
    now = [100.0]
    cache = _TTLCache(30.0, lambda: now[0])
    cache.put("k", "v")
    now[0] = 129.9
    assert cache.get("k") == "v"
    now[0] = 130.0
    assert cache.get("k") is None


def test_cache_with_no_ttl_keeps_nothing() -> None:
    cache = _TTLCache(0.0, lambda: 0.0)
    cache.put("k", "v")
    assert cache.get("k") is None


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = _TTLCache(30.0, lambda: 0.0)
    for i in range(CACHE_ENTRIES_MAX):
        cache.put(i, i)
    assert cache.get(0) == 0  # now the most recently used
    cache.put("new", "new")
    assert cache.get(1) is None
    assert cache.get(0) == 0
    assert cache.get("new") == "new"


def test_caller_repr_hides_the_token() -> None:
    assert "secret" not in repr(Caller(user_id="u", name="ann", token="secret"))


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, max_s=4.0)
    delays = [backoff.next_delay_s() for _ in range(5)]
    bounds = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True))
    backoff.reset()
    assert 0.5 <= backoff.next_delay_s() <= 1.0
