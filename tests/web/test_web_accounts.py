"""Users and tokens: tokens are shown once and stored only as hashes."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from web_service.accounts import (
    AccountError,
    UnknownUser,
    UserExists,
    create_user,
    generate_token,
    hash_token,
    issue_token,
)
from web_service.database import open_engine
from web_service.models import Token


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
