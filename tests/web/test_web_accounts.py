"""Users and tokens: tokens are shown once and stored only as hashes."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fxbroker.cli import main
from web_service.accounts import (
    AccountError,
    UnknownToken,
    UnknownUser,
    UserExists,
    create_user,
    generate_token,
    hash_token,
    issue_token,
    list_tokens,
    revoke_token,
)
from web_service.store.database import open_engine
from web_service.store.models import Token


def test_tokens_are_random_and_prefixed() -> None:
    first, second = generate_token(), generate_token()
    assert first.startswith("fxb_") and len(first) > 40
    assert first != second
    assert hash_token(first) == hash_token(first) != hash_token(second)
    assert len(hash_token(first)) == 64


async def test_create_user_stores_only_the_tokens_hash(migrated_database_url: str) -> None:
    user_id, token = await create_user(migrated_database_url, "carol")
    second = await issue_token(migrated_database_url, "carol")
    async with open_engine(migrated_database_url) as engine, AsyncSession(engine) as session:
        rows = (await session.scalars(select(Token).where(Token.user_id == user_id))).all()
    assert sorted(row.token_hash for row in rows) == sorted([hash_token(token), hash_token(second)])
    assert sorted(row.prefix for row in rows) == sorted([token[:8], second[:8]])
    assert all(row.revoked_at is None for row in rows)


async def test_names_are_unique(migrated_database_url: str) -> None:
    await create_user(migrated_database_url, "dave")
    with pytest.raises(UserExists, match="dave"):
        await create_user(migrated_database_url, "dave")


async def test_bad_names_and_unknown_users(migrated_database_url: str) -> None:
    for name in ["", " padded ", "x" * 256]:
        with pytest.raises(AccountError):
            await create_user(migrated_database_url, name)
    with pytest.raises(UnknownUser, match="nobody"):
        await issue_token(migrated_database_url, "nobody")


async def test_revoke_a_token_by_its_prefix(migrated_database_url: str) -> None:
    await create_user(migrated_database_url, "gina")
    first = await issue_token(migrated_database_url, "gina")
    second = await issue_token(migrated_database_url, "gina")
    await revoke_token(migrated_database_url, first[:8])
    listed = await list_tokens(migrated_database_url, "gina")
    assert len(listed) == 3
    by_prefix = {token.prefix: token for token in listed}
    assert by_prefix[first[:8]].revoked_at is not None
    assert by_prefix[second[:8]].revoked_at is None
    await revoke_token(migrated_database_url, second)  # the whole token names itself too
    with pytest.raises(UnknownToken, match="no live token"):
        await revoke_token(migrated_database_url, first[:8])
    with pytest.raises(AccountError, match="8 characters"):
        await revoke_token(migrated_database_url, "fxb_")
    with pytest.raises(UnknownUser):
        await list_tokens(migrated_database_url, "nobody")


async def test_an_ambiguous_prefix_revokes_nothing(migrated_database_url: str) -> None:
    user_id, token = await create_user(migrated_database_url, "hank")
    async with open_engine(migrated_database_url) as engine, AsyncSession(engine) as session:
        twin = "fxb_" + token[4:8] + "different-rest-of-the-token"
        session.add(Token(user_id=user_id, token_hash=hash_token(twin), prefix=twin[:8]))
        await session.commit()
    with pytest.raises(UnknownToken, match="2 live tokens"):
        await revoke_token(migrated_database_url, token[:8])
    assert all(t.revoked_at is None for t in await list_tokens(migrated_database_url, "hank"))


def test_the_cli_creates_issues_lists_and_revokes(
    migrated_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["user", "create", "ivy"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("fxb_")
    assert main(["user", "token", "ivy"]) == 0
    second = capsys.readouterr().out.strip()
    assert main(["user", "revoke", token[:8]]) == 0
    assert main(["user", "tokens", "ivy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [token[:8], second[:8]]
    assert lines[0].endswith("live") is False and lines[1].endswith("live")
    assert main(["user", "revoke", token[:8]]) == 1
    assert "no live token" in capsys.readouterr().err
    assert main(["user", "create", "ivy"]) == 1
    assert main(["user", "token", "nobody"]) == 1
