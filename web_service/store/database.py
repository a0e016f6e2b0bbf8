"""The async SQL engine: one per process, opened in the app's lifespan or by a CLI call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from web_service.settings import async_database_url

SQLITE_BUSY_S = 30.0
"""How long a SQLite writer waits for another's lock before failing."""


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url`` (plain URLs get their asyncio driver).

    On SQLite, foreign keys are switched on for every connection, as PostgreSQL always has
    them; the file is in WAL mode (readers never wait for the writer) and a writer waits up to
    :data:`SQLITE_BUSY_S` for another's lock: SQLite's own 5 s made a burst of new task groups
    from many clients fail as "database is locked", which the service took for an outage.
    """
    url = async_database_url(database_url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=url.startswith("postgresql"))


@asynccontextmanager
async def open_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine that is disposed when the block ends."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA database_list")
        if cursor.fetchone()[2]:  # a file, not :memory:
            cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def sql_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached now (refused, restarting, a
    connection dropped, the pool exhausted) rather than that a statement was wrong: an
    outage to wait out. The asyncpg driver raises a bare ``OSError`` when it cannot connect."""
    if isinstance(
        exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError | OSError
    ):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
