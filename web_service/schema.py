"""Migrating the SQL schema with Alembic, without an ``alembic.ini``.

The Alembic environment lives in the ``migrations`` package; :func:`alembic_config` points
a :class:`alembic.config.Config` at it and hands the database URL over in
``config.attributes`` (so no URL is ever interpolated by ``configparser``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from importlib.resources import files

from alembic import command
from alembic.config import Config

from web_service.settings import async_database_url

MIGRATIONS_PACKAGE = "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the migrations package and ``database_url``.

    ``migrations/env.py`` reads the URL from ``config.attributes["database_url"]``.
    """
    config = Config()
    config.set_main_option("script_location", str(files(MIGRATIONS_PACKAGE)))
    config.attributes["database_url"] = async_database_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at ``database_url`` up to ``revision``; blocks until done.

    Alembic runs in a thread of its own with its own event loop, so this is safe to call
    from synchronous code whether or not an event loop runs in the calling thread.
    Raises whatever Alembic or the database raised.
    """
    _in_own_thread(command.upgrade, alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database at ``database_url`` down to ``revision`` (``"base"``: empty).

    Runs like :func:`upgrade`, in a thread of its own.
    """
    _in_own_thread(command.downgrade, alembic_config(database_url), revision)


def _in_own_thread(run: Callable[[Config, str], None], config: Config, revision: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fxb-migrate") as pool:
        pool.submit(run, config, revision).result()
