"""Sharing with named users: turning names into ids, and replacing an object's share rows.

Functions and endpoints are shared the same way (a table of ``(object id, user id)`` rows);
these helpers serve both, inside the caller's session and transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from web_service.errors import ApiError
from web_service.store.models import EndpointShare, FunctionShare, User

MAX_NAMES_SHOWN = 10

ShareTable = type[FunctionShare] | type[EndpointShare]


async def user_ids_for_names(session: AsyncSession, names: Collection[str]) -> dict[str, str]:
    """``{name: user id}`` for ``names``; 404 ``USER_NOT_FOUND`` naming those that do not exist
    (as a body's unknown function or task group id is a 404)."""
    if not names:
        return {}
    rows = await session.execute(select(User.name, User.id).where(User.name.in_(list(names))))
    found = {row.name: row.id for row in rows}
    unknown = sorted(set(names) - set(found))
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:MAX_NAMES_SHOWN])
        raise ApiError(404, "USER_NOT_FOUND", f"no user is named {shown}")
    return found


def _object_column(table: ShareTable) -> InstrumentedAttribute[Any]:
    return FunctionShare.function_id if table is FunctionShare else EndpointShare.endpoint_id


async def shared_user_ids(
    session: AsyncSession, table: ShareTable, object_ids: Collection[str]
) -> dict[str, frozenset[str]]:
    """``{object id: ids of the users it is shared with}`` for each of ``object_ids``."""
    column = _object_column(table)
    rows = await session.execute(
        select(column.label("object_id"), table.user_id).where(column.in_(list(object_ids)))
    )
    shared: dict[str, set[str]] = {object_id: set() for object_id in object_ids}
    for row in rows:
        shared[row.object_id].add(row.user_id)
    return {object_id: frozenset(users) for object_id, users in shared.items()}


async def shared_user_names(session: AsyncSession, table: ShareTable, object_id: str) -> list[str]:
    """The names of the users ``object_id`` is shared with, sorted."""
    column = _object_column(table)
    rows = await session.scalars(
        select(User.name).join(table, table.user_id == User.id).where(column == object_id)
    )
    return sorted(rows)


async def replace_shares(
    session: AsyncSession, table: ShareTable, object_id: str, user_ids: Collection[str]
) -> None:
    """Make ``user_ids`` exactly the users ``object_id`` is shared with (not committed)."""
    column = _object_column(table)
    await session.execute(delete(table).where(column == object_id))
    if user_ids:
        await session.execute(
            insert(table), [{column.key: object_id, "user_id": uid} for uid in user_ids]
        )
