"""The pure parts of the handshake: the caller record. (The retry policy is
:mod:`service_common.retry`'s, tested in tests/common.)

Bearer parsing and the answer cache are :mod:`service_common`'s (tests/common).
"""

from __future__ import annotations

from ws_service.auth import Caller


def test_caller_repr_hides_the_token() -> None:
    assert "secret" not in repr(Caller(user_id="u", name="ann", token="secret"))
