"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from web_service.schema import downgrade, upgrade
from web_service.store.database import open_engine
from web_service.store.models import (
    Endpoint,
    EndpointAllowedFunction,
    Function,
    FunctionShare,
    TaskGroup,
    Token,
    User,
    metadata,
)

USER, FUNCTION, ENDPOINT, GROUP = (str(uuid.uuid4()) for _ in range(4))


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


async def test_head_keeps_what_0001_held(database_url: str) -> None:
    """Data written under the first revision survives the upgrade to head, with defaults."""
    upgrade(database_url, "0001_initial")
    created = datetime(2026, 1, 2, tzinfo=UTC)
    rows = {
        "users": {"id": USER, "name": "old-user", "created_at": created},
        "tokens": {
            "id": str(uuid.uuid4()),
            "user_id": USER,
            "token_hash": "ab" * 32,
            "prefix": "fxb_abcd",
            "created_at": created,
            "revoked_at": None,
        },
        "functions": {
            "id": FUNCTION,
            "owner_id": USER,
            "name": "f",
            "description": "",
            "code": "st\nf:def f(): pass",
            "code_hash": "cd" * 32,
            "created_at": created,
        },
        "endpoints": {"id": ENDPOINT, "owner_id": USER, "name": "gpu", "created_at": created},
        "task_groups": {"id": GROUP, "owner_id": USER, "created_at": created},
    }
    async with open_engine(database_url) as engine, engine.begin() as connection:
        for table, row in rows.items():
            columns = ", ".join(row)
            values = ", ".join(f":{name}" for name in row)
            await connection.execute(
                text(f"INSERT INTO {table} ({columns}) VALUES ({values})"), row
            )
    upgrade(database_url)
    async with open_engine(database_url) as engine, AsyncSession(engine) as session:
        user = await session.get(User, USER)
        assert user is not None and (user.name, user.identity_id) == ("old-user", None)
        function = await session.get(Function, FUNCTION)
        assert function is not None
        assert (function.code, function.public, function.deleted_at) == (
            "st\nf:def f(): pass",
            False,
            None,
        )
        endpoint = await session.get(Endpoint, ENDPOINT)
        assert endpoint is not None and (endpoint.name, endpoint.deleted_at) == ("gpu", None)
        assert (endpoint.credential_hash, endpoint.credential_prefix) == (None, None)
        assert await session.get(TaskGroup, GROUP) is not None
        token = await session.scalar(select(Token).where(Token.user_id == USER))
        assert token is not None and token.prefix == "fxb_abcd"
        session.add(FunctionShare(function_id=FUNCTION, user_id=USER))
        session.add(EndpointAllowedFunction(endpoint_id=ENDPOINT, function_id=FUNCTION))
        await session.commit()
