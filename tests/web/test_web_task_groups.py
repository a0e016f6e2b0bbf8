"""New task groups are written in batches: claims that arrive together share a transaction,
and a claim whose id another process took meanwhile is refused alone. On the suite's
database (PostgreSQL) and on the embedded SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from web_service.accounts import create_user
from web_service.schema import upgrade
from web_service.store.database import open_engine
from web_service.store.models import TaskGroup
from web_service.store.task_groups import TaskGroupCatalog


@pytest.fixture(params=["suite", "sqlite"])
def groups_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'groups.db'}"
        upgrade(url)
        return url
    url: str = request.getfixturevalue("migrated_database_url")
    return url


@pytest.fixture
async def engine(groups_database_url: str) -> AsyncIterator[AsyncEngine]:
    async with open_engine(groups_database_url) as engine:
        yield engine


def catalog(engine: AsyncEngine) -> TaskGroupCatalog:
    return TaskGroupCatalog(async_sessionmaker(engine, expire_on_commit=False))


def count_commits(engine: AsyncEngine) -> list[int]:
    commits = [0]

    def commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(engine.sync_engine, "commit", commit)
    return commits


async def rows_of(engine: AsyncEngine, owner_id: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(TaskGroup.owner_id == owner_id)
        return int((await conn.execute(query)).scalar_one())


async def test_claims_that_arrive_together_share_a_transaction(
    engine: AsyncEngine, groups_database_url: str
) -> None:
    alice, _ = await create_user(groups_database_url, "alice")
    groups = catalog(engine)
    commits = count_commits(engine)

    claimed = await asyncio.gather(*(groups.claim(alice, None) for _ in range(120)))

    assert all(claimed) and len(set(claimed)) == 120
    assert await rows_of(engine, alice) == 120
    assert commits[0] <= 2  # 120 one-row transactions before
    for group_id in claimed:  # each is the owner's, from the cache and from SQL alike
        assert group_id is not None
        assert (await groups.get(alice, group_id)) is not None
        assert (await catalog(engine).get(alice, group_id)) is not None


async def test_an_id_another_process_took_is_refused_alone(
    engine: AsyncEngine, groups_database_url: str
) -> None:
    alice, _ = await create_user(groups_database_url, "alice")
    bob, _ = await create_user(groups_database_url, "bob")
    taken = str(uuid.uuid4())
    assert await catalog(engine).claim(bob, taken, new=True) == taken  # another process

    groups = catalog(engine)
    fresh = [str(uuid.uuid4()) for _ in range(5)]
    claimed = await asyncio.gather(
        *(groups.claim(alice, g, new=True) for g in [*fresh[:2], taken, *fresh[2:]])
    )

    assert claimed == [*fresh[:2], None, *fresh[2:]]
    assert await rows_of(engine, alice) == 5
    assert await groups.get(alice, taken) is None
    assert (await groups.get(bob, taken)) is not None


async def test_one_id_claimed_twice_at_once_by_its_owner_is_one_group(
    engine: AsyncEngine, groups_database_url: str
) -> None:
    alice, _ = await create_user(groups_database_url, "alice")
    groups = catalog(engine)
    chosen = str(uuid.uuid4())

    claimed = await asyncio.gather(groups.claim(alice, chosen), groups.claim(alice, chosen))

    assert claimed == [chosen, chosen]
    assert await rows_of(engine, alice) == 1


async def test_claims_the_database_cannot_take_each_raise_its_error(tmp_path: Path) -> None:
    """A database that is away fails every claim waiting on the write (the request answers
    503 from there); none is left waiting, and the next claims are written once it is back."""
    url = f"sqlite:///{tmp_path / 'gone' / 'groups.db'}"  # its folder does not exist yet
    async with open_engine(url) as engine:
        groups = catalog(engine)
        outcomes = await asyncio.gather(
            *(groups.claim("someone", None) for _ in range(5)), return_exceptions=True
        )
        assert len(outcomes) == 5
        assert all(isinstance(o, OperationalError) for o in outcomes), outcomes

        (tmp_path / "gone").mkdir()
        await asyncio.to_thread(upgrade, url)
        owner, _ = await create_user(url, "alice")
        claimed = await asyncio.gather(*(groups.claim(owner, None) for _ in range(3)))
        assert all(claimed) and await rows_of(engine, owner) == 3
