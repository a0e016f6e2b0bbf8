"""The SQL side of functions, endpoints and task groups, with the caches of the hot path.

Owners never change and (so far) nothing is deleted, so what a batch submit needs to know
(who owns an endpoint, a function and its code, a task group) is cached in process after
the first look-up: a steady stream of submits costs one SQL statement per batch (the new
task group's row) and none per task.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web_service.cache import LRUCache
from web_service.models import (
    Endpoint,
    Function,
    TaskGroup,
    code_hash,
    function_id_for,
    is_id,
    new_id,
    unix_seconds,
    utcnow,
)

OWNER_CACHE_ITEMS = 100_000


@dataclass(frozen=True, kw_only=True)
class FunctionRecord:
    id: str
    owner_id: str
    name: str
    description: str
    created_at: float


@dataclass(frozen=True, kw_only=True)
class EndpointRecord:
    id: str
    owner_id: str
    name: str
    created_at: float


@dataclass(frozen=True, kw_only=True)
class TaskGroupRecord:
    id: str
    owner_id: str
    created_at: float


@dataclass(frozen=True)
class _Code:
    owner_id: str
    code: str


class Catalog:
    """Reads and writes the catalog tables; every method answers for one owner."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, function_cache_bytes: int
    ) -> None:
        self._sessions = sessions
        self._codes: LRUCache[str, _Code] = LRUCache(
            max_items=OWNER_CACHE_ITEMS,
            max_weight=function_cache_bytes,
            weigh=lambda entry: len(entry.code),
        )
        self._endpoints: LRUCache[str, EndpointRecord] = LRUCache(max_items=OWNER_CACHE_ITEMS)
        self._groups: LRUCache[str, TaskGroupRecord] = LRUCache(max_items=OWNER_CACHE_ITEMS)

    # functions

    async def register_function(
        self, owner_id: str, *, name: str, description: str, code: str
    ) -> str:
        """Store a function once per (owner, code); the same code gets the same id back.

        A second registration of the same code keeps the first name and description.
        """
        digest = code_hash(code)
        function_id = function_id_for(owner_id, digest)
        async with self._sessions() as session:
            if await session.get(Function, function_id) is None:
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
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()  # registered concurrently: same id, same code
        self._codes.put(function_id, _Code(owner_id, code))
        return function_id

    async def function(self, owner_id: str, function_id: str) -> FunctionRecord | None:
        if not is_id(function_id):
            return None
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Function.name, Function.description, Function.created_at).where(
                        Function.id == function_id, Function.owner_id == owner_id
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        return FunctionRecord(
            id=function_id,
            owner_id=owner_id,
            name=row.name,
            description=row.description,
            created_at=unix_seconds(row.created_at),
        )

    async def function_codes(
        self, owner_id: str, function_ids: Collection[str]
    ) -> tuple[dict[str, str], list[str]]:
        """The code of each of ``function_ids`` the owner has, and the ids they do not have.

        At most one SQL query, for the ids not cached yet.
        """
        codes: dict[str, str] = {}
        misses: list[str] = []
        for function_id in function_ids:
            entry = self._codes.get(function_id)
            if entry is None:
                misses.append(function_id)
            elif entry.owner_id == owner_id:
                codes[function_id] = entry.code
        lookup = [function_id for function_id in misses if is_id(function_id)]
        if lookup:
            async with self._sessions() as session:
                rows = await session.execute(
                    select(Function.id, Function.owner_id, Function.code).where(
                        Function.id.in_(lookup)
                    )
                )
                for row in rows:
                    self._codes.put(row.id, _Code(row.owner_id, row.code))
                    if row.owner_id == owner_id:
                        codes[row.id] = row.code
        missing = [function_id for function_id in function_ids if function_id not in codes]
        return codes, missing

    # endpoints

    async def register_endpoint(self, owner_id: str, name: str) -> EndpointRecord:
        """The owner's endpoint called ``name``, created if it is new."""
        async with self._sessions() as session:
            row = await self._endpoint_named(session, owner_id, name)
            if row is None:
                session.add(Endpoint(id=new_id(), owner_id=owner_id, name=name))
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()  # created concurrently under the same name
                row = await self._endpoint_named(session, owner_id, name)
            assert row is not None
            record = EndpointRecord(
                id=row.id, owner_id=owner_id, name=name, created_at=unix_seconds(row.created_at)
            )
        self._endpoints.put(record.id, record)
        return record

    @staticmethod
    async def _endpoint_named(session: AsyncSession, owner_id: str, name: str) -> Endpoint | None:
        return await session.scalar(
            select(Endpoint).where(Endpoint.owner_id == owner_id, Endpoint.name == name)
        )

    async def endpoint(self, owner_id: str, endpoint_id: str) -> EndpointRecord | None:
        record = self._endpoints.get(endpoint_id)
        if record is None and is_id(endpoint_id):
            async with self._sessions() as session:
                row = await session.get(Endpoint, endpoint_id)
            if row is not None:
                record = EndpointRecord(
                    id=row.id,
                    owner_id=row.owner_id,
                    name=row.name,
                    created_at=unix_seconds(row.created_at),
                )
                self._endpoints.put(endpoint_id, record)
        return record if record is not None and record.owner_id == owner_id else None

    # task groups

    async def task_group(self, owner_id: str, task_group_id: str) -> TaskGroupRecord | None:
        record = self._groups.get(task_group_id)
        if record is None and is_id(task_group_id):
            async with self._sessions() as session:
                row = await session.get(TaskGroup, task_group_id)
            if row is not None:
                record = TaskGroupRecord(
                    id=row.id, owner_id=row.owner_id, created_at=unix_seconds(row.created_at)
                )
                self._groups.put(task_group_id, record)
        return record if record is not None and record.owner_id == owner_id else None

    async def claim_task_group(self, owner_id: str, task_group_id: str | None) -> str | None:
        """The task group a batch goes into: ``task_group_id`` or, if None, a new one.

        The row is written only when the group is new. Returns None when the group exists
        and belongs to someone else.
        """
        if task_group_id is not None:
            existing = await self.task_group(owner_id, task_group_id)
            if existing is not None:
                return existing.id
            if self._groups.get(task_group_id) is not None:
                return None
        group_id = task_group_id or new_id()
        created = utcnow()
        async with self._sessions() as session:
            session.add(TaskGroup(id=group_id, owner_id=owner_id, created_at=created))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # created concurrently, maybe by someone else
                row = await session.get(TaskGroup, group_id)
                if row is None or row.owner_id != owner_id:
                    return None
                created = row.created_at
        record = TaskGroupRecord(id=group_id, owner_id=owner_id, created_at=unix_seconds(created))
        self._groups.put(group_id, record)
        return group_id
