"""Alembic environment: runs migrations over an async engine through ``run_sync``.

The database URL comes from ``config.attributes["database_url"]`` (set by
``web_service.schema.alembic_config``), else from the ``sqlalchemy.url`` option.
SQLite gets batch mode so later revisions can alter its tables, and runs with foreign keys
off: batch mode rebuilds a table by copying it and dropping the old one, which with foreign
keys on would cascade-delete every row that refers to it.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from web_service.store.database import create_engine
from web_service.store.models import metadata


def _database_url() -> str:
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: set config.attributes['database_url']")
    return str(url)


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=dialect.startswith("sqlite"),
        literal_binds=connection is None,
    )


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "sqlite":  # before any transaction, or it is ignored
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    url = _database_url()
    if context.is_offline_mode():
        _configure(url=url)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(_run_online(url))


main()
