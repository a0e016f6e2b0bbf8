"""The SQL side of endpoints: registration, reading, listing, sharing, allow-lists, deletion.

The owner does everything; a user the endpoint is shared with may read it, see its status and
submit tasks to it. Everyone else is told it does not exist (404). An endpoint's allow-list
names the only functions it runs (an empty list: any function); submit enforces it and the
agent enforces it again from the Redis mirror (``Keys.endpoint_allowed_functions``).

Deleting an endpoint hides it from everyone (404) and refuses new tasks; its row, shares and
allow-list stay, and registering its name again revives it with the same id. Tasks already
queued stay on its stream.

What a submit needs (owner, shares, allow-list) is cached in process for ``catalog_cache_s``;
changes made on another web process are seen within that many seconds, this process's own
at once.

**Credentials.** Each endpoint has at most one live credential: ``fxep_`` and 32 random bytes
in URL-safe base64, shown once, when issued, and kept in SQL only as its sha256 and first 12
characters. Creating an endpoint issues one, and so does reviving a deleted one (deleting
revokes it); finding an existing endpoint by name does not, so a credential is never shown
twice. The owner replaces it (rotate: the old one stops working at once) or revokes it;
an endpoint registered before credentials existed gets its first one by rotating.
:meth:`EndpointCatalog.for_credential` is never cached here: a rotated or revoked
credential is refused by the web service at once (the ws service caches its answers for
``auth_cache_s``).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service_common.cache import LRUCache
from service_common.tokens import ENDPOINT_CREDENTIAL_PREFIX, hash_token, is_endpoint_credential
from web_service.store.models import (
    CREDENTIAL_PREFIX_LENGTH,
    Endpoint,
    EndpointAllowedFunction,
    EndpointShare,
    is_id,
    new_id,
    unix_seconds,
    utcnow,
)
from web_service.store.sharing import (
    replace_shares,
    shared_user_ids,
    shared_user_names,
    user_ids_for_names,
)

CACHE_ITEMS = 100_000
CREDENTIAL_BYTES = 32
"""Random bytes in a credential: 256 bits, beyond guessing."""


def generate_credential() -> str:
    """A new random endpoint credential."""
    return ENDPOINT_CREDENTIAL_PREFIX + secrets.token_urlsafe(CREDENTIAL_BYTES)


def _issue(row: Endpoint) -> str:
    """Give ``row`` a new credential (replacing any) and return it; the caller commits."""
    credential = generate_credential()
    row.credential_hash = hash_token(credential)
    row.credential_prefix = credential[:CREDENTIAL_PREFIX_LENGTH]
    row.credential_issued_at = utcnow()
    return credential


def _clear_credential(row: Endpoint) -> None:
    row.credential_hash = None
    row.credential_prefix = None
    row.credential_issued_at = None


@dataclass(frozen=True, kw_only=True)
class EndpointRecord:
    id: str
    owner_id: str
    name: str
    created_at: float
    deleted: bool
    shared_with: frozenset[str]
    allowed_functions: frozenset[str]
    """Empty: the endpoint runs any function its users may run."""
    credential_prefix: str | None = None
    """The first characters of its live credential; None when it has none."""
    credential_issued_at: float | None = None

    def usable_by(self, user_id: str) -> bool:
        return not self.deleted and (self.owner_id == user_id or user_id in self.shared_with)

    def allows(self, function_id: str) -> bool:
        return not self.allowed_functions or function_id in self.allowed_functions


class EndpointCatalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, cache_s: float) -> None:
        self._sessions = sessions
        self._records: LRUCache[str, EndpointRecord] = LRUCache(
            max_items=CACHE_ITEMS, ttl_s=cache_s
        )

    async def register(self, owner_id: str, name: str) -> tuple[EndpointRecord, str | None]:
        """The owner's endpoint called ``name``: created if new, revived if deleted; and the
        credential this call issued (on creation or revival), else None.

        Of two calls that create the same name at once, only the one whose row was written
        gets a credential; the other finds the endpoint."""
        credential: str | None = None
        async with self._sessions() as session:
            row = await self._named(session, owner_id, name)
            if row is None:
                row = Endpoint(id=new_id(), owner_id=owner_id, name=name)
                credential = _issue(row)
                session.add(row)
            elif row.deleted_at is not None:
                row.deleted_at = None
                credential = _issue(row)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # created concurrently under the same name
                credential = None
            row = await self._named(session, owner_id, name)
            assert row is not None
            endpoint_id = row.id
        self._records.forget(endpoint_id)
        record = await self._load(endpoint_id)
        assert record is not None
        return record, credential

    async def rotate_credential(self, endpoint_id: str) -> tuple[str, float]:
        """Issue the endpoint a new credential; its old one stops working. Returns the new
        one and when it was issued (Unix seconds)."""
        async with self._sessions() as session:
            row = await session.get(Endpoint, endpoint_id)
            assert row is not None, "the caller checked the endpoint exists"
            credential = _issue(row)
            assert row.credential_issued_at is not None
            issued_at = unix_seconds(row.credential_issued_at)
            await session.commit()
        self._records.forget(endpoint_id)
        return credential, issued_at

    async def revoke_credential(self, endpoint_id: str) -> bool:
        """Revoke the endpoint's credential; False when it had none."""
        async with self._sessions() as session:
            row = await session.get(Endpoint, endpoint_id)
            assert row is not None, "the caller checked the endpoint exists"
            had_one = row.credential_hash is not None
            _clear_credential(row)
            await session.commit()
        self._records.forget(endpoint_id)
        return had_one

    async def for_credential(self, credential: str) -> EndpointRecord | None:
        """The endpoint whose live credential ``credential`` is; None for anything else
        (unknown, rotated away, revoked, a deleted endpoint's, or not a credential at all).

        Cost: one indexed SQL query, plus the endpoint's shares and allow-list on a cold
        catalog cache (the record may be up to ``catalog_cache_s`` old; the check of the
        credential never is)."""
        if not is_endpoint_credential(credential):
            return None
        async with self._sessions() as session:
            endpoint_id = await session.scalar(
                select(Endpoint.id).where(
                    Endpoint.credential_hash == hash_token(credential),
                    Endpoint.deleted_at.is_(None),
                )
            )
        if endpoint_id is None:
            return None
        return await self._load(endpoint_id)

    @staticmethod
    async def _named(session: AsyncSession, owner_id: str, name: str) -> Endpoint | None:
        return await session.scalar(
            select(Endpoint).where(Endpoint.owner_id == owner_id, Endpoint.name == name)
        )

    async def _load(self, endpoint_id: str) -> EndpointRecord | None:
        record = self._records.get(endpoint_id)
        if record is not None or not is_id(endpoint_id):
            return record
        async with self._sessions() as session:
            row = await session.get(Endpoint, endpoint_id)
            if row is None:
                return None
            shares = await shared_user_ids(session, EndpointShare, [endpoint_id])
            allowed = await session.scalars(
                select(EndpointAllowedFunction.function_id).where(
                    EndpointAllowedFunction.endpoint_id == endpoint_id
                )
            )
            record = EndpointRecord(
                id=row.id,
                owner_id=row.owner_id,
                name=row.name,
                created_at=unix_seconds(row.created_at),
                deleted=row.deleted_at is not None,
                shared_with=shares[endpoint_id],
                allowed_functions=frozenset(allowed),
                credential_prefix=row.credential_prefix,
                credential_issued_at=(
                    None
                    if row.credential_issued_at is None
                    else unix_seconds(row.credential_issued_at)
                ),
            )
        self._records.put(endpoint_id, record)
        return record

    async def get(self, user_id: str, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint if ``user_id`` may use it (and it is not deleted)."""
        record = await self._load(endpoint_id)
        return record if record is not None and record.usable_by(user_id) else None

    async def list_for(self, user_id: str, *, limit: int, offset: int) -> list[EndpointRecord]:
        """The user's own endpoints and those shared with them, oldest first.

        The records carry no shares or allow-list (read those one endpoint at a time)."""
        shared = select(EndpointShare.endpoint_id).where(EndpointShare.user_id == user_id)
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Endpoint)
                    .where(
                        or_(Endpoint.owner_id == user_id, Endpoint.id.in_(shared)),
                        Endpoint.deleted_at.is_(None),
                    )
                    .order_by(Endpoint.created_at, Endpoint.id)
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return [
            EndpointRecord(
                id=row.id,
                owner_id=row.owner_id,
                name=row.name,
                created_at=unix_seconds(row.created_at),
                deleted=False,
                shared_with=frozenset(),
                allowed_functions=frozenset(),
            )
            for row in rows
        ]

    async def delete(self, endpoint_id: str) -> None:
        """Hide the endpoint and revoke its credential."""
        async with self._sessions() as session:
            await session.execute(
                update(Endpoint)
                .where(Endpoint.id == endpoint_id)
                .values(
                    deleted_at=utcnow(),
                    credential_hash=None,
                    credential_prefix=None,
                    credential_issued_at=None,
                )
            )
            await session.commit()
        self._records.forget(endpoint_id)

    async def shared_with(self, endpoint_id: str) -> list[str]:
        """The names of the users the endpoint is shared with."""
        async with self._sessions() as session:
            return await shared_user_names(session, EndpointShare, endpoint_id)

    async def set_shares(self, endpoint_id: str, *, names: Collection[str], owner_id: str) -> None:
        """Share the endpoint with exactly the users ``names`` (the owner's name is ignored).

        Raises 404 ``USER_NOT_FOUND`` (changing nothing) when a name is unknown.
        """
        async with self._sessions() as session:
            found = await user_ids_for_names(session, names)
            user_ids = [user_id for user_id in found.values() if user_id != owner_id]
            await replace_shares(session, EndpointShare, endpoint_id, user_ids)
            await session.commit()
        self._records.forget(endpoint_id)

    async def set_allowed_functions(self, endpoint_id: str, function_ids: Collection[str]) -> None:
        """Replace the allow-list in SQL (the caller mirrors it into Redis afterwards)."""
        async with self._sessions() as session:
            await session.execute(
                delete(EndpointAllowedFunction).where(
                    EndpointAllowedFunction.endpoint_id == endpoint_id
                )
            )
            if function_ids:
                await session.execute(
                    insert(EndpointAllowedFunction),
                    [{"endpoint_id": endpoint_id, "function_id": fid} for fid in function_ids],
                )
            await session.commit()
        self._records.forget(endpoint_id)
