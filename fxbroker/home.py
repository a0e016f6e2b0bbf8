"""``$FXBROKER_HOME``: what it holds, and how every ``fxbroker`` command finds the dev stack
there (``FXBROKER_HOME`` defaults to ``~/.fxbroker``, as for ``Client()``)::

    config.json   the service's URLs, a token and the default endpoint: what ``Client()``
                  reads (:mod:`sdk.config`)
    stack.json    what ``fxbroker dev`` runs on: its database, Redis and key prefix;
                  readable by its owner only, as the URLs may hold passwords
    fxbroker.db   the dev stack's SQLite database, unless it was given ``DATABASE_URL``
    redis/        the embedded Redis's append-only file
    endpoints/    one folder per endpoint on this machine (:mod:`fxbroker.endpoints`);
                  ``local`` is the dev stack's own

``stack.json`` keeps service secrets out of ``config.json``, which clients read. A command
takes each value from the first place that has it: its flag, the environment variable
(``DATABASE_URL``, ``REDIS_URL``, ...), then ``stack.json``. The file outlives the stack:
after ``fxbroker dev`` stops, ``fxbroker user create`` still reaches its database.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from sdk.config import read_json_file
from sdk.errors import ConfigurationError

STACK_FILE = "stack.json"
DATABASE_FILE = "fxbroker.db"


def sqlite_url(home: Path) -> str:
    """The URL of the SQLite database ``fxbroker dev`` keeps in ``home``."""
    return f"sqlite+aiosqlite:///{home / DATABASE_FILE}"


@dataclass(frozen=True, kw_only=True)
class StackRecord:
    """Where a ``fxbroker dev`` keeps its state: what ``stack.json`` holds."""

    database_url: str
    redis_url: str
    key_prefix: str


def write_stack_record(home: Path, record: StackRecord) -> Path:
    """Replace ``home/stack.json`` atomically, readable by its owner only; returns its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / STACK_FILE
    tmp = path.with_name(f".{STACK_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_stack_record(home: Path) -> StackRecord | None:
    """``home/stack.json``, or ``None`` when no dev stack ever ran there.

    A file that cannot be read or is not what :func:`write_stack_record` writes raises
    :class:`ConfigurationError`."""
    path = home / STACK_FILE
    data = read_json_file(path)
    if data is None:
        return None
    names = ("database_url", "redis_url", "key_prefix")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), str) and data[name] for name in names
    ):
        raise ConfigurationError(f"{path} must hold non-empty strings {', '.join(names)}")
    return StackRecord(**{name: data[name] for name in names})


def database_url(environ: Mapping[str, str], home: Path) -> str:
    """``DATABASE_URL``, else the database of the dev stack that ran in ``home``.

    Raises :class:`ConfigurationError` when there is neither."""
    url = environ.get("DATABASE_URL")
    if url:
        return url
    record = read_stack_record(home)
    if record is None:
        raise ConfigurationError(
            f"DATABASE_URL is not set and no `fxbroker dev` has run in {home} "
            "(FXBROKER_HOME): set DATABASE_URL, or start `fxbroker dev` first"
        )
    return record.database_url
