"""Shared fixtures: real Redis and SQL when ``REDIS_URL`` / ``DATABASE_URL`` are set.

Without ``REDIS_URL`` a private ``redis-server`` is started for the session (fakeredis's
TCP server where no binary exists); without ``DATABASE_URL`` each test gets a SQLite file.
Every test gets its own Redis key prefix and deletes only its own keys afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sdk.keys import Keys
from tests.private_redis import PrivateRedis, require_redis_server
from tests.redis_urls import async_redis, delete_keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    port = free_port()
    if binary is None:
        import threading

        from fakeredis import TcpFakeServer  # the fakeredis seam, only without a real Redis

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.shutdown()
            server.server_close()
        return
    workdir = tempfile.mkdtemp(prefix="fxb-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"fxt-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_keys(redis_url, prefix)


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis | aioredis.RedisCluster]:
    """An asyncio client of ``REDIS_URL`` (a cluster client for a cluster URL)."""
    client = async_redis(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """``DATABASE_URL`` (a fresh database of this test's own on that server) or a SQLite file."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        yield f"sqlite+aiosqlite:///{tmp_path / 'fxbroker.db'}"
        return
    yield from postgres_database(url)


def postgres_database(url: str) -> Iterator[str]:
    """Create a private database next to the one ``url`` names; drop it afterwards."""
    import asyncio
    import concurrent.futures

    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"fxt_{uuid.uuid4().hex[:12]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(sql)).result()

    run(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A ``redis-server`` of this test's own (AOF, ``appendfsync always``) that it may stop,
    kill and restart (see :mod:`tests.private_redis`); skips where none is installed."""
    require_redis_server()
    with PrivateRedis(tmp_path / "redis") as server:
        yield server
