"""OAuth2 client credentials: how a script configured by environment variables alone (the
Globus Compute SDK's ``GLOBUS_COMPUTE_CLIENT_ID`` / ``_SECRET``) authenticates as a user.

``fxbroker user client-credentials NAME`` mints a pair: the client id (a uuid) and a secret
(``fxcs_`` and 32 random bytes in URL-safe base64), shown once; SQL keeps only the secret's
sha256. ``POST /v2/oauth2/token`` (:mod:`web_service.routes.oauth`) exchanges the pair for an
access token: an ordinary API token (``fxb_...``) that names the credential and expires after
:data:`ACCESS_TOKEN_TTL_S`; ``POST /v2/oauth2/token/revoke`` (that SDK's ``logout``) revokes
one such token. Revoking the credential revokes every token it was exchanged for; they are
refused within ``auth_cache_s`` by every web process, as any revoked token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service_common.tokens import hash_token
from web_service.accounts import SHOWN_PREFIX_LENGTH, AccountError, UnknownUser, generate_token
from web_service.store.database import open_engine
from web_service.store.models import ClientCredential, Token, User, is_id, new_id, utcnow

SECRET_PREFIX = "fxcs_"
ACCESS_TOKEN_TTL_S = 48 * 3600
"""How long an exchanged access token works: the 48 hours Globus Auth gives its tokens."""


@dataclass(frozen=True)
class MintedCredential:
    client_id: str
    secret: str


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in_s: int


class UnknownClient(AccountError):
    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.client_id = client_id

    def __str__(self) -> str:
        return f"no live client credential has the id {self.client_id!r}"


async def mint_client_credential(database_url: str, name: str) -> MintedCredential:
    """A new client id and secret for the user ``name``; raises :class:`UnknownUser`."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        user_id = await session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise UnknownUser(name)
        client_id = new_id()
        session.add(ClientCredential(id=client_id, user_id=user_id, secret_hash=hash_token(secret)))
        await session.commit()
        return MintedCredential(client_id, secret)


async def revoke_client_credential(database_url: str, client_id: str) -> None:
    """Revoke the credential and every access token exchanged for it; raises
    :class:`UnknownClient` when no live credential has that id."""
    now = utcnow()
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        revoked = await session.execute(
            update(ClientCredential)
            .where(ClientCredential.id == client_id, ClientCredential.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if not getattr(revoked, "rowcount", 0):
            raise UnknownClient(client_id)
        await session.execute(
            update(Token)
            .where(Token.client_id == client_id, Token.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.commit()


class ClientCredentialExchange:
    """Exchanges a live client id and secret for an access token (two SQL statements and a
    commit; a script asks once per token lifetime, the SDK caches the token)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def exchange(self, client_id: str, secret: str) -> AccessToken | None:
        """A new access token, or None when the pair is unknown, wrong or revoked.

        Tokens of this credential that have expired are deleted on the way."""
        async with self._sessions() as session:
            row = await _live_credential(session, client_id, secret)
            if row is None:
                return None
            now = utcnow()
            await session.execute(
                delete(Token).where(Token.client_id == client_id, Token.expires_at < now)
            )
            token = generate_token()
            session.add(
                Token(
                    user_id=row.user_id,
                    token_hash=hash_token(token),
                    prefix=token[:SHOWN_PREFIX_LENGTH],
                    client_id=client_id,
                    expires_at=now + timedelta(seconds=ACCESS_TOKEN_TTL_S),
                )
            )
            await session.commit()
        return AccessToken(token, ACCESS_TOKEN_TTL_S)

    async def revoke(self, client_id: str, secret: str, token: str) -> bool:
        """Revoke ``token`` if this credential was exchanged for it; False when the pair is
        unknown, wrong or revoked. Any other token, or none, is left alone (RFC 7009 §2.2:
        the caller learns nothing about tokens that are not its own)."""
        async with self._sessions() as session:
            if await _live_credential(session, client_id, secret) is None:
                return False
            await session.execute(
                update(Token)
                .where(
                    Token.token_hash == hash_token(token),
                    Token.client_id == client_id,
                    Token.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            await session.commit()
        return True


async def _live_credential(
    session: AsyncSession, client_id: str, secret: str
) -> ClientCredential | None:
    """The credential ``client_id`` names if it is live and ``secret`` is its secret."""
    if not is_id(client_id):
        return None
    row = await session.scalar(
        select(ClientCredential).where(
            ClientCredential.id == client_id, ClientCredential.revoked_at.is_(None)
        )
    )
    if row is None or not hmac.compare_digest(row.secret_hash, hash_token(secret)):
        return None
    return row


def is_live(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a token with ``expires_at`` still works at ``now`` (None: it never expires)."""
    if expires_at is None:
        return True
    if expires_at.tzinfo is None:  # SQLite drops the zone; we store UTC
        expires_at = expires_at.replace(tzinfo=now.tzinfo)
    return expires_at > now
