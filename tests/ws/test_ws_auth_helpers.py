"""The pure parts of the handshake and retry logic: the caller record, backoff.

Bearer parsing and the answer cache are :mod:`service_common`'s (tests/common).
"""

from __future__ import annotations

from ws_service.auth import Caller
from ws_service.server import Backoff


def test_caller_repr_hides_the_token() -> None:
    assert "secret" not in repr(Caller(user_id="u", name="ann", token="secret"))


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, max_s=4.0)
    delays = [backoff.next_delay_s() for _ in range(5)]
    bounds = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True))
    backoff.reset()
    assert 0.5 <= backoff.next_delay_s() <= 1.0
