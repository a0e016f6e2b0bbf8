"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from web_service.database import open_engine
from web_service.models import metadata
from web_service.schema import downgrade, upgrade


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_head_matches_the_models(database_url: str) -> None:
    upgrade(database_url)  # called with this test's event loop running
    async with open_engine(database_url) as engine, engine.connect() as connection:
        assert await connection.run_sync(_differences) == []


async def test_an_empty_database_differs_from_the_models(database_url: str) -> None:
    """The check above can fail: without migrations every table is reported missing."""
    async with open_engine(database_url) as engine, engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert {diff[1].name for diff in differences if diff[0] == "add_table"} == set(metadata.tables)


async def test_downgrade_to_base_and_back(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    async with open_engine(database_url) as engine, engine.connect() as connection:
        assert await connection.run_sync(_tables) == {"alembic_version"}
    upgrade(database_url)
    async with open_engine(database_url) as engine, engine.connect() as connection:
        assert await connection.run_sync(_tables) == {*metadata.tables, "alembic_version"}
