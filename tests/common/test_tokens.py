"""Bearer tokens: parsed from the Authorization header and hashed the same way everywhere."""

from __future__ import annotations

import pytest

from service_common.tokens import bearer_token, hash_token, is_endpoint_credential


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("  BEARER fxb_x-y_z", "fxb_x-y_z"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_hash_token_is_the_sha256_hex_digest() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token("abc") != hash_token("abd")


def test_an_endpoint_credential_is_told_from_a_user_token_by_its_prefix() -> None:
    assert is_endpoint_credential("fxep_abc")
    assert not is_endpoint_credential("fxb_abc")
    assert not is_endpoint_credential("fxe_abc")
    assert not is_endpoint_credential("globus-token")
