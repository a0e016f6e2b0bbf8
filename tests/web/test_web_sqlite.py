"""The embedded SQL default: a SQLite file that many concurrent writers share without
"database is locked" (WAL, and a writer waits for the lock instead of failing at 5 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from web_service.store.database import SQLITE_BUSY_S, open_engine


async def test_a_sqlite_file_is_in_wal_mode_and_writers_wait_their_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fx.db'}"
    async with open_engine(url) as engine:
        async with engine.begin() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == int(
                SQLITE_BUSY_S * 1000
            )
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))

        async def write(n: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
                await asyncio.sleep(0.01)  # hold the write lock while the others queue

        await asyncio.gather(*(write(n) for n in range(40)))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 40
