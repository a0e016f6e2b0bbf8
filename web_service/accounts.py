"""Users and their API tokens: what the ``fxbroker user ...`` commands and ``fxbroker dev`` call.

A token is ``fxb_`` followed by 32 random bytes in URL-safe base64. It is shown once, when
issued; SQL keeps only its sha256 (hex) and its first 8 characters (to name it later, for
revocation). A user seen first through Globus Auth is created by :func:`user_for_identity`.
Errors::

    AccountError        base of this module's errors (a service_common ServiceError)
    ├── UserExists      create_user: the name is taken
    ├── UnknownUser     issue_token, list_tokens: no user has that name
    └── UnknownToken    revoke_token: no live token matches (or several do)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service_common.errors import ServiceError
from service_common.tokens import hash_token
from web_service.store.database import open_engine
from web_service.store.models import Token, User, utcnow

TOKEN_PREFIX = "fxb_"
SHOWN_PREFIX_LENGTH = 8
MAX_NAME_LENGTH = 255


class AccountError(ServiceError):
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


class UnknownToken(AccountError):
    def __init__(self, prefix: str, matches: int) -> None:
        super().__init__(prefix, matches)
        self.prefix = prefix
        self.matches = matches

    def __str__(self) -> str:
        if self.matches:
            return f"{self.matches} live tokens start with {self.prefix!r}; give the whole token"
        return f"no live token starts with {self.prefix!r}"


@dataclass(frozen=True)
class Caller:
    """The user a request was authenticated as."""

    user_id: str
    name: str


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: its first characters and its dates."""

    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def generate_token() -> str:
    """A new random API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _token_row(user_id: str) -> tuple[Token, str]:
    token = generate_token()
    row = Token(user_id=user_id, token_hash=hash_token(token), prefix=token[:SHOWN_PREFIX_LENGTH])
    return row, token


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


async def list_tokens(database_url: str, name: str) -> list[TokenInfo]:
    """The tokens of the user ``name``, oldest first; raises :class:`UnknownUser`."""
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        user_id = await session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise UnknownUser(name)
        rows = await session.execute(
            select(Token.prefix, Token.created_at, Token.revoked_at)
            .where(Token.user_id == user_id)
            .order_by(Token.created_at, Token.id)
        )
        return [TokenInfo(row.prefix, row.created_at, row.revoked_at) for row in rows]


async def revoke_token(database_url: str, token_or_prefix: str) -> None:
    """Revoke the one live token that starts with ``token_or_prefix`` (or is it).

    The first 8 characters of a token name it (``fxbroker user tokens NAME`` lists them); a
    whole token names itself. Raises :class:`UnknownToken` when no live token or more than
    one matches, so a short prefix never revokes more than the caller meant. A revoked token
    is refused within ``auth_cache_s`` by every web process.
    """
    given = token_or_prefix.strip()
    if len(given) < SHOWN_PREFIX_LENGTH:
        raise AccountError(f"give at least the first {SHOWN_PREFIX_LENGTH} characters of a token")
    live = Token.revoked_at.is_(None)
    if len(given) > SHOWN_PREFIX_LENGTH:
        match = live & (Token.token_hash == hash_token(given))
    else:
        match = live & (Token.prefix == given)
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        ids = (await session.scalars(select(Token.id).where(match))).all()
        if len(ids) != 1:
            raise UnknownToken(given[:SHOWN_PREFIX_LENGTH], len(ids))
        await session.execute(update(Token).where(Token.id == ids[0]).values(revoked_at=utcnow()))
        await session.commit()


async def user_for_identity(session: AsyncSession, identity_id: str, username: str) -> User:
    """The user of a Globus identity, created on first sight and named after ``username``.

    When another user already holds that name, the new one is ``username#<identity_id>``.
    Safe against a concurrent first sight on another process: the unique identity wins.
    """
    user = await session.scalar(select(User).where(User.identity_id == identity_id))
    if user is not None:
        return user
    for name in (username[:MAX_NAME_LENGTH], f"{username[:200]}#{identity_id}"):
        user = User(name=name, identity_id=identity_id)
        session.add(user)
        try:
            await session.commit()
            return user
        except IntegrityError:
            await session.rollback()
            existing = await session.scalar(select(User).where(User.identity_id == identity_id))
            if existing is not None:
                return existing
    raise AccountError(f"could not create a user for the Globus identity {identity_id}")
