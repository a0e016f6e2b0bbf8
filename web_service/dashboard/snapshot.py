"""What the dashboard shows a user, as one JSON snapshot: endpoints, tasks, functions.

It shows what ``/v1`` would show the same user and nothing more: endpoints they own or that
are shared with them (``EndpointCatalog.list_for``), functions they own, that are shared
with them or public (``FunctionCatalog.list_for``), and the tasks of their own task groups
(read with their ``user_id`` checked on every hash).

Bounds, so a page left open stays small: at most :data:`MAX_ENDPOINTS` endpoints and
:data:`MAX_FUNCTIONS` functions, the :data:`MAX_GROUPS` newest task groups, the
:data:`SAMPLE_TASKS` newest of their tasks read for the counts and the chart, and the
:data:`SHOWN_TASKS` newest of those listed. Each endpoint is what
:func:`web_service.overview.endpoint_statuses` makes of it, the same view as
``GET /v1/endpoints/status``; its chart is tasks finished per second in :data:`BUCKET_S`-second
buckets over the last :data:`WINDOW_S` seconds, counted from that sample (so a user finishing
more than :data:`SAMPLE_TASKS` tasks in the window sees the newest ones only; the page says
so).

:func:`group_views` and :func:`function_views` are pure; :class:`Snapshots` does the
reading, SQL catalogs at most every :data:`CATALOG_REFRESH_S` seconds and Redis on every call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sdk.messages import hash_seconds
from web_service.accounts import Caller
from web_service.context import AppContext
from web_service.overview import (
    BUCKET_S,
    MAX_GROUPS,
    SAMPLE_TASKS,
    WINDOW_S,
    endpoint_statuses,
    read_sample,
    summarize,
)
from web_service.routes.functions import function_view
from web_service.store.endpoints import EndpointRecord
from web_service.store.functions import FunctionRecord

MAX_ENDPOINTS = 100
MAX_FUNCTIONS = 200
SHOWN_TASKS = 200
CATALOG_REFRESH_S = 5.0


def _seconds(fields: dict[str, str], name: str) -> float | None:
    return hash_seconds(fields.get(name))


def group_views(
    groups: Sequence[tuple[str, float]], tasks: Iterable[dict[str, str]]
) -> list[dict[str, Any]]:
    """The recent task groups (``(id, created_at)``, newest first) with the counts of their
    tasks in the sample, as :func:`summarize` counts them; groups with none left out."""
    members: dict[str, list[dict[str, str]]] = {group_id: [] for group_id, _ in groups}
    for task in tasks:
        members.get(task.get("task_group_id", ""), []).append(task)
    return [
        {"task_group_id": group_id, "created_at": created_at, "tasks": len(members[group_id]),
         **summarize(members[group_id])}
        for group_id, created_at in groups
        if members[group_id]
    ]  # fmt: skip


def function_views(
    functions: Sequence[FunctionRecord],
    endpoints: Sequence[EndpointRecord],
    sharing: dict[str, list[str]],
    caller: Caller,
) -> list[dict[str, Any]]:
    """The Functions view: each function as ``/v1`` shows it, plus who it is shared with
    (for its owner) and which of the caller's endpoints' allow-lists admit it."""
    views = []
    for record in functions:
        view = function_view(record, caller)
        view["shared_with"] = sharing.get(record.id)
        view["allowed_on"] = [
            {"endpoint_id": e.id, "name": e.name, "any_function": not e.allowed_functions}
            for e in endpoints
            if e.allows(record.id)
        ]
        views.append(view)
    return views


def task_view(task: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    created = _seconds(task, "created_at")
    started = _seconds(task, "started_at")
    completed = _seconds(task, "completed_at")
    return {
        "task_id": task.get("task_id"),
        "state": task.get("state"),
        "endpoint_id": task.get("endpoint_id"),
        "endpoint_name": names.get(task.get("endpoint_id", "")),
        "function_id": task.get("function_id"),
        "function_name": names.get(task.get("function_id", "")),
        "task_group_id": task.get("task_group_id"),
        "created_at": created,
        "started_at": started,
        "completed_at": completed,
        "duration_s": completed - started if completed and started else None,
    }


class Snapshots:
    """Builds one user's snapshots; one per dashboard connection (it caches the catalogs)."""

    def __init__(self, context: AppContext, caller: Caller) -> None:
        self._context = context
        self._caller = caller
        self._read_at = -math.inf
        self._endpoints: list[EndpointRecord] = []
        self._functions: list[dict[str, Any]] = []
        self._names: dict[str, str] = {}
        self._groups: list[tuple[str, float]] = []

    async def _read_catalogs(self) -> None:
        c, user_id = self._context, self._caller.user_id
        endpoints = await c.endpoints.list_for(user_id, limit=MAX_ENDPOINTS, offset=0)
        functions = await c.functions.list_for(user_id, limit=MAX_FUNCTIONS, offset=0)
        owned = [f.id for f in functions if f.owner_id == user_id]
        shares = await asyncio.gather(*(c.functions.sharing(fid) for fid in owned))
        sharing = {fid: users for fid, (_, users) in zip(owned, shares, strict=True)}
        groups = await c.task_groups.recent_for(user_id, limit=MAX_GROUPS)
        self._endpoints = endpoints
        self._functions = function_views(functions, endpoints, sharing, self._caller)
        self._names = {e.id: e.name for e in endpoints} | {f.id: f.name for f in functions}
        self._groups = [(g.id, g.created_at) for g in groups]

    async def snapshot(self) -> dict[str, Any]:
        """The dashboard's state now (see the module docstring)."""
        if time.monotonic() - self._read_at >= CATALOG_REFRESH_S:
            await self._read_catalogs()
            self._read_at = time.monotonic()
        tasks = await read_sample(self._context, self._caller.user_id, [g for g, _ in self._groups])
        now = time.time()
        endpoints = await endpoint_statuses(
            self._context, self._caller, self._endpoints, tasks, now=now
        )
        return {
            "user": self._caller.name,
            "now": now,
            "bucket_s": BUCKET_S,
            "window_s": WINDOW_S,
            "sample_tasks": SAMPLE_TASKS,
            "counts": summarize(tasks),
            "endpoints": endpoints,
            "tasks": [task_view(task, self._names) for task in tasks[:SHOWN_TASKS]],
            "task_groups": group_views(self._groups, tasks),
            "functions": self._functions,
        }
