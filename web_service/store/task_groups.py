"""The SQL side of task groups: one row per group, written when its first batch arrives.

A group belongs to the user who created it and is never shared nor deleted, so who owns it
is cached in process without expiry: a steady stream of submits into known groups costs no
SQL at all. New groups are written in batches: the claims that arrive while a write is in
flight go together into the next, one transaction for all of them, so 200 clients opening a
group each at once cost a few commits rather than 200 (on SQLite each commit is a sync of
its log, and about a millisecond of the service's CPU). A batch that a row written
meanwhile refuses (the same id claimed by another process) is written again one row at a
time, so only that claim learns the id is taken.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

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


@dataclass(kw_only=True)
class _NewGroup:
    """A claim of a new group, waiting for its row to be written."""

    id: str
    owner_id: str
    created_at: datetime
    written: asyncio.Future[datetime | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """The row's creation time once written; None when the id is someone else's."""

    def __post_init__(self) -> None:
        # A claim whose request went away meanwhile leaves no one to read an error: read here.
        self.written.add_done_callback(lambda f: f.cancelled() or f.exception())


class TaskGroupCatalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._groups: LRUCache[str, TaskGroupRecord] = LRUCache(max_items=CACHE_ITEMS)
        self._unwritten: list[_NewGroup] = []
        self._writer: asyncio.Task[None] | None = None

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
            known = self._groups.get(task_group_id)  # written while get read, maybe
            if known is not None:
                return known.id if known.owner_id == owner_id else None
        group_id = task_group_id or new_id()
        claim = _NewGroup(id=group_id, owner_id=owner_id, created_at=utcnow())
        self._unwritten.append(claim)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_claims(), name="task-group-writer")
        created = await asyncio.shield(claim.written)
        if created is None:
            return None
        record = TaskGroupRecord(id=group_id, owner_id=owner_id, created_at=unix_seconds(created))
        self._groups.put(group_id, record)
        return group_id

    async def _write_claims(self) -> None:
        """Write the waiting claims, a batch per transaction, until none waits."""
        while self._unwritten:
            batch, self._unwritten = self._unwritten, []
            try:
                await self._write_batch(batch)
            except IntegrityError:
                for claim in batch:
                    await self._write_one(claim)
            except Exception as exc:  # the database is away: each claim's request says so
                for claim in batch:
                    if not claim.written.done():
                        claim.written.set_exception(exc)
            except BaseException:  # the service is stopping
                for claim in [*batch, *self._unwritten]:
                    claim.written.cancel()
                raise

    async def _write_batch(self, batch: list[_NewGroup]) -> None:
        async with self._sessions() as session:
            session.add_all(
                TaskGroup(id=c.id, owner_id=c.owner_id, created_at=c.created_at) for c in batch
            )
            await session.commit()
        for claim in batch:
            if not claim.written.done():
                claim.written.set_result(claim.created_at)

    async def _write_one(self, claim: _NewGroup) -> None:
        """One claim on its own: the group's row, or None when the id is someone else's."""
        try:
            async with self._sessions() as session:
                session.add(
                    TaskGroup(id=claim.id, owner_id=claim.owner_id, created_at=claim.created_at)
                )
                try:
                    await session.commit()
                    created: datetime | None = claim.created_at
                except IntegrityError:
                    await session.rollback()  # created concurrently, maybe by someone else
                    row = await session.get(TaskGroup, claim.id)
                    created = None
                    if row is not None and row.owner_id == claim.owner_id:
                        created = row.created_at
        except Exception as exc:
            if not claim.written.done():
                claim.written.set_exception(exc)
            return
        if not claim.written.done():
            claim.written.set_result(created)

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
