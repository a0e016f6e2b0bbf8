"""The SQL side of task groups: one row per group, written when its first batch arrives.

A group belongs to the user who created it and is never shared nor deleted, so who owns it
is cached in process without expiry: a steady stream of submits into known groups costs no
SQL at all, and a batch that opens a new group costs one ``INSERT``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service_common.cache import LRUCache
from web_service.store.models import TaskGroup, is_id, new_id, unix_seconds, utcnow

CACHE_ITEMS = 100_000


@dataclass(frozen=True, kw_only=True)
class TaskGroupRecord:
    id: str
    owner_id: str
    created_at: float


class TaskGroupCatalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._groups: LRUCache[str, TaskGroupRecord] = LRUCache(max_items=CACHE_ITEMS)

    async def get(self, owner_id: str, task_group_id: str) -> TaskGroupRecord | None:
        """The group if it is ``owner_id``'s."""
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

    async def claim(
        self, owner_id: str, task_group_id: str | None, *, new: bool = False
    ) -> str | None:
        """The task group a batch goes into: ``task_group_id`` or, if None, a new one.

        The row is written only when the group is new; ``new`` says the caller just made
        ``task_group_id`` up (a fresh id), so it is written without looking for it first.
        Returns None when the group exists and belongs to someone else.
        """
        if task_group_id is not None and not new:
            existing = await self.get(owner_id, task_group_id)
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

    async def list_for(self, owner_id: str, *, limit: int, offset: int) -> list[TaskGroupRecord]:
        """The owner's task groups, oldest first."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(TaskGroup.id, TaskGroup.created_at)
                .where(TaskGroup.owner_id == owner_id)
                .order_by(TaskGroup.created_at, TaskGroup.id)
                .limit(limit)
                .offset(offset)
            )
            return [
                TaskGroupRecord(
                    id=row.id, owner_id=owner_id, created_at=unix_seconds(row.created_at)
                )
                for row in rows
            ]

    async def recent_for(self, owner_id: str, *, limit: int) -> list[TaskGroupRecord]:
        """The owner's ``limit`` newest task groups, newest first."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(TaskGroup.id, TaskGroup.created_at)
                .where(TaskGroup.owner_id == owner_id)
                .order_by(TaskGroup.created_at.desc(), TaskGroup.id.desc())
                .limit(limit)
            )
            return [
                TaskGroupRecord(
                    id=row.id, owner_id=owner_id, created_at=unix_seconds(row.created_at)
                )
                for row in rows
            ]
