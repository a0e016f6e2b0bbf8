"""Endpoints as a user sees them: the record, its agents' heartbeat, its queue's load and
the tasks it finished lately. One place builds these views for ``/v1`` (an endpoint, its
status, ``GET /v1/endpoints/status``) and for the dashboard's endpoint cards.

Load (``queued``, ``in_flight``) is the endpoint's whole queue, whoever submitted; what it
*finished* is counted from the caller's own tasks only: the :data:`SAMPLE_TASKS` newest
tasks of their :data:`MAX_GROUPS` newest task groups (:func:`read_sample`), so a user
finishing more than that many tasks in the window sees the newest ones only. Throughput is
tasks finished per second in :data:`BUCKET_S`-second buckets over the last :data:`WINDOW_S`
seconds.

:func:`endpoint_view`, :func:`status_view`, :func:`summarize` and :func:`throughput` are
pure; :func:`read_sample` and :func:`endpoint_statuses` read Redis (and SQL for the groups).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

from sdk.states import TaskState
from web_service.accounts import Caller
from web_service.context import AppContext
from web_service.store.endpoints import EndpointRecord
from web_service.taskstore.endpoint_state import endpoint_load, endpoint_status
from web_service.taskstore.tasks import recent_tasks

MAX_GROUPS = 50
SAMPLE_TASKS = 2000
BUCKET_S = 10
WINDOW_S = 15 * 60
FINISHED = frozenset({TaskState.SUCCESS.value, TaskState.FAILED.value, TaskState.CANCELLED.value})


def endpoint_view(record: EndpointRecord, caller: Caller) -> dict[str, Any]:
    return {
        "endpoint_id": record.id,
        "name": record.name,
        "owner_id": record.owner_id,
        "owned": record.owner_id == caller.user_id,
        "created_at": record.created_at,
    }


def _number(fields: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
    """A heartbeat field as a number; None when absent or not a number."""
    try:
        return kind(fields[name])
    except (KeyError, ValueError):
        return None


def status_view(
    endpoint_id: str, beat: dict[str, str], queued: int, in_flight: int
) -> dict[str, Any]:
    """An endpoint's status from its heartbeat (empty: offline) and its stream's load."""
    return {
        "endpoint_id": endpoint_id,
        "online": bool(beat),
        "queued": queued,
        "in_flight": in_flight,
        "workers": _number(beat, "workers", int),
        "running": _number(beat, "running", int),
        "capacity": _number(beat, "capacity", int),
        "last_heartbeat": _number(beat, "heartbeat_at", float),
        "agent": beat.get("agent"),
        "host": beat.get("host"),
        "version": beat.get("version"),
        "engine": beat.get("engine"),
    }


def summarize(tasks: Iterable[dict[str, str]]) -> dict[str, int]:
    """``{"queued", "running", "finished", "failed", "cancelled"}`` counts of ``tasks``
    (``finished`` counts every terminal state, ``failed`` and ``cancelled`` are in it)."""
    counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0, "cancelled": 0}
    for task in tasks:
        state = task.get("state", "")
        if state == TaskState.WAITING.value:
            counts["queued"] += 1
        elif state == TaskState.RUNNING.value:
            counts["running"] += 1
        elif state in FINISHED:
            counts["finished"] += 1
            if state != TaskState.SUCCESS.value:
                counts[state] += 1
    return counts


def throughput(
    tasks: Iterable[dict[str, str]], endpoint_ids: Sequence[str], *, now: float
) -> dict[str, list[float]]:
    """Per endpoint, tasks finished per second in each :data:`BUCKET_S` bucket of the last
    :data:`WINDOW_S` seconds, oldest bucket first (the last one is the current, partial)."""
    buckets = WINDOW_S // BUCKET_S
    end = math.floor(now / BUCKET_S) * BUCKET_S + BUCKET_S
    counts = {endpoint_id: [0] * buckets for endpoint_id in endpoint_ids}
    for task in tasks:
        try:
            done = float(task["completed_at"])
        except (KeyError, ValueError):
            continue
        series = counts.get(task.get("endpoint_id", ""))
        if series is None:
            continue
        index = buckets - 1 - int((end - done) // BUCKET_S)
        if 0 <= index < buckets:
            series[index] += 1
    return {eid: [n / BUCKET_S for n in series] for eid, series in counts.items()}


async def read_sample(
    context: AppContext, user_id: str, group_ids: Sequence[str]
) -> list[dict[str, str]]:
    """The user's :data:`SAMPLE_TASKS` newest tasks of ``group_ids`` (their newest groups,
    newest first), as ``recent_tasks`` reads them: two Redis round trips."""
    return await recent_tasks(context.redis, context.keys, user_id, group_ids, limit=SAMPLE_TASKS)


async def endpoint_statuses(
    context: AppContext,
    caller: Caller,
    records: Sequence[EndpointRecord],
    sample: Iterable[dict[str, str]],
    *,
    now: float,
) -> list[dict[str, Any]]:
    """Each endpoint of ``records`` as :func:`endpoint_view` and :func:`status_view` show
    it, with ``tasks_per_s`` (:func:`throughput` of ``sample``) and ``finished``, the tasks
    of ``sample`` it finished in the window. Cost: one Redis round trip per endpoint for
    the heartbeats, run together, and one for all the loads."""
    ids = [record.id for record in records]
    beats = await asyncio.gather(*(endpoint_status(context.redis, context.keys, e) for e in ids))
    load = await endpoint_load(context.redis, context.keys, ids)
    rates = throughput(sample, ids, now=now)
    views = []
    for record, beat in zip(records, beats, strict=True):
        view = endpoint_view(record, caller) | status_view(record.id, beat or {}, *load[record.id])
        view["finished"] = round(sum(rates[record.id]) * BUCKET_S)
        view["tasks_per_s"] = rates[record.id]
        views.append(view)
    return views
