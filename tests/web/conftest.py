"""Fixtures for the web service: a migrated database, two users, the app in process."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn

from tests.conftest import free_port
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.schema import upgrade
from web_service.settings import WebSettings

from .helpers import ApiUser, in_process_client


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
def web_settings(migrated_database_url: str, redis_url: str, key_prefix: str) -> WebSettings:
    return WebSettings(
        database_url=migrated_database_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        ws_url="ws://127.0.0.1:8001",
        max_tasks_per_batch=50,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
async def client(web_settings: WebSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(create_app(web_settings)) as http:
        yield http


@pytest.fixture
async def alice(migrated_database_url: str, client: httpx.AsyncClient) -> ApiUser:
    user_id, token = await create_user(migrated_database_url, "alice")
    return ApiUser(user_id, "alice", token, client)


@pytest.fixture
async def bob(migrated_database_url: str, client: httpx.AsyncClient) -> ApiUser:
    user_id, token = await create_user(migrated_database_url, "bob")
    return ApiUser(user_id, "bob", token, client)


@pytest.fixture
def server_url(web_settings: WebSettings) -> Iterator[str]:
    """The web service under uvicorn, in a thread of its own, on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(web_settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the web service did not start")
            thread.join(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
