"""The SQL side of functions: registration, reading, listing, sharing and deletion.

Who may do what: the owner does everything; a user the function is shared with, or anyone
when it is public, may read its metadata (not its code) and run it. Everyone else is told it
does not exist (404). A deleted function keeps its row and its code in Redis, so tasks
queued before the deletion still run; new submissions of it answer 410 ``FUNCTION_DELETED``.

What a batch submit needs (owner, sharing, code) is cached in process, weighed by the size
of the code, for ``catalog_cache_s``: another web process sees a share, an unshare or a
deletion made elsewhere within that many seconds; this process sees its own at once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service_common.cache import LRUCache
from web_service.store.models import (
    Function,
    FunctionShare,
    code_hash,
    function_id_for,
    is_id,
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


@dataclass(frozen=True, kw_only=True)
class FunctionRecord:
    id: str
    owner_id: str
    name: str
    description: str
    created_at: float
    public: bool
    deleted: bool
    shared_with: frozenset[str]
    code: str

    def usable_by(self, user_id: str) -> bool:
        """True if ``user_id`` may see and run it (deleted or not)."""
        return self.owner_id == user_id or self.public or user_id in self.shared_with


@dataclass(frozen=True, kw_only=True)
class SubmitCheck:
    """What :meth:`FunctionCatalog.check_submit` found: codes to queue, ids to refuse."""

    codes: dict[str, str]
    missing: list[str]
    deleted: list[str]


class FunctionCatalog:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_bytes: int,
        cache_s: float,
    ) -> None:
        self._sessions = sessions
        self._records: LRUCache[str, FunctionRecord] = LRUCache(
            max_items=CACHE_ITEMS,
            max_weight=cache_bytes,
            weigh=lambda record: len(record.code),
            ttl_s=cache_s,
        )

    async def register(self, owner_id: str, *, name: str, description: str, code: str) -> str:
        """Store a function once per (owner, code); the same code gets the same id back.

        A second registration of the same code keeps the first name and description, and
        revives the function if it was deleted.
        """
        digest = code_hash(code)
        function_id = function_id_for(owner_id, digest)
        async with self._sessions() as session:
            row = await session.get(Function, function_id)
            if row is None:
                session.add(
                    Function(
                        id=function_id,
                        owner_id=owner_id,
                        name=name,
                        description=description,
                        code=code,
                        code_hash=digest,
                    )
                )
            elif row.deleted_at is not None:
                row.deleted_at = None
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # registered concurrently: same id, same code
        self._records.forget(function_id)
        return function_id

    async def records(self, function_ids: Collection[str]) -> dict[str, FunctionRecord]:
        """The functions among ``function_ids`` that exist, deleted or not.

        Cached ones cost nothing; the rest cost two SQL queries in one session.
        """
        found: dict[str, FunctionRecord] = {}
        misses: list[str] = []
        for function_id in function_ids:
            record = self._records.get(function_id)
            if record is not None:
                found[function_id] = record
            elif is_id(function_id):
                misses.append(function_id)
        if misses:
            async with self._sessions() as session:
                rows = (
                    await session.scalars(select(Function).where(Function.id.in_(misses)))
                ).all()
                shares = await shared_user_ids(session, FunctionShare, [r.id for r in rows])
            for row in rows:
                record = _record(row, shares[row.id])
                self._records.put(row.id, record)
                found[row.id] = record
        return found

    async def get(self, user_id: str, function_id: str) -> FunctionRecord | None:
        """The function if ``user_id`` may use it and it is not deleted."""
        record = (await self.records([function_id])).get(function_id)
        if record is None or record.deleted or not record.usable_by(user_id):
            return None
        return record

    async def check_submit(self, user_id: str, function_ids: Collection[str]) -> SubmitCheck:
        """Sort the functions of a batch into usable (with code), missing and deleted."""
        records = await self.records(function_ids)
        codes: dict[str, str] = {}
        missing: list[str] = []
        deleted: list[str] = []
        for function_id in function_ids:
            record = records.get(function_id)
            if record is None or not record.usable_by(user_id):
                missing.append(function_id)
            elif record.deleted:
                deleted.append(function_id)
            else:
                codes[function_id] = record.code
        return SubmitCheck(codes=codes, missing=missing, deleted=deleted)

    async def list_for(self, user_id: str, *, limit: int, offset: int) -> list[FunctionRecord]:
        """The user's own functions and those shared with them, oldest first (no code)."""
        shared = select(FunctionShare.function_id).where(FunctionShare.user_id == user_id)
        async with self._sessions() as session:
            rows = await session.execute(
                select(
                    Function.id,
                    Function.owner_id,
                    Function.name,
                    Function.description,
                    Function.created_at,
                    Function.public,
                )
                .where(
                    or_(Function.owner_id == user_id, Function.id.in_(shared)),
                    Function.deleted_at.is_(None),
                )
                .order_by(Function.created_at, Function.id)
                .limit(limit)
                .offset(offset)
            )
            return [
                FunctionRecord(
                    id=row.id,
                    owner_id=row.owner_id,
                    name=row.name,
                    description=row.description,
                    created_at=unix_seconds(row.created_at),
                    public=row.public,
                    deleted=False,
                    shared_with=frozenset(),
                    code="",
                )
                for row in rows
            ]

    async def delete(self, function_id: str) -> None:
        """Mark the function deleted; its row and cached code stay for queued tasks."""
        async with self._sessions() as session:
            await session.execute(
                update(Function).where(Function.id == function_id).values(deleted_at=utcnow())
            )
            await session.commit()
        self._records.forget(function_id)

    async def sharing(self, function_id: str) -> tuple[bool, list[str]]:
        """``(public, names of the users it is shared with)``."""
        async with self._sessions() as session:
            public = await session.scalar(select(Function.public).where(Function.id == function_id))
            names = await shared_user_names(session, FunctionShare, function_id)
        return bool(public), names

    async def set_sharing(
        self, function_id: str, *, public: bool, names: Collection[str], owner_id: str
    ) -> None:
        """Make the function public or not, and shared with exactly the users ``names``.

        Raises 404 ``USER_NOT_FOUND`` (changing nothing) when a name is unknown; the owner's
        own name is ignored.
        """
        async with self._sessions() as session:
            found = await user_ids_for_names(session, names)
            user_ids = [user_id for user_id in found.values() if user_id != owner_id]
            await session.execute(
                update(Function).where(Function.id == function_id).values(public=public)
            )
            await replace_shares(session, FunctionShare, function_id, user_ids)
            await session.commit()
        self._records.forget(function_id)


def _record(row: Function, shared_with: frozenset[str]) -> FunctionRecord:
    return FunctionRecord(
        id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        description=row.description,
        created_at=unix_seconds(row.created_at),
        public=row.public,
        deleted=row.deleted_at is not None,
        shared_with=shared_with,
        code=row.code,
    )
