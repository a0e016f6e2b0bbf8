"""Users and their API tokens: what the ``fxbroker user ...`` commands and ``fxbroker dev`` call.

A token is ``fxb_`` followed by 32 random bytes in URL-safe base64. It is shown once, when
issued; SQL keeps only its sha256 (hex) and its first 8 characters (to name it later, for
revocation). Errors::

    AccountError        base of this module's errors
    ├── UserExists      create_user: the name is taken
    └── UnknownUser     issue_token: no user has that name
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from web_service.database import open_engine
from web_service.models import Token, User

TOKEN_PREFIX = "fxb_"
MAX_NAME_LENGTH = 255


class AccountError(Exception):
    """A user or token operation could not be done."""


class UserExists(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"a user named {self.name!r} already exists"


class UnknownUser(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no user is named {self.name!r}"


def generate_token() -> str:
    """A new random API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 hex digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def _token_row(user_id: str) -> tuple[Token, str]:
    token = generate_token()
    return Token(user_id=user_id, token_hash=hash_token(token), prefix=token[:8]), token


async def create_user(database_url: str, name: str) -> tuple[str, str]:
    """Create the user ``name`` with a first token; returns ``(user_id, token)``.

    Raises :class:`UserExists` if the name is taken, :class:`AccountError` if it is
    empty or longer than 255 characters.
    """
    if not name or len(name) > MAX_NAME_LENGTH or name != name.strip():
        raise AccountError(f"a user name must be 1 to {MAX_NAME_LENGTH} characters, unpadded")
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        user = User(name=name)
        session.add(user)
        try:
            await session.flush()
        except IntegrityError as exc:
            raise UserExists(name) from exc
        user_id = user.id
        row, token = _token_row(user_id)
        session.add(row)
        await session.commit()
        return user_id, token


async def issue_token(database_url: str, name: str) -> str:
    """Issue one more token for the user ``name``; raises :class:`UnknownUser`."""
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        user_id = await session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise UnknownUser(name)
        row, token = _token_row(user_id)
        session.add(row)
        await session.commit()
        return token
