"""``Client`` and ``AsyncClient`` are twins: the same public methods with the same
parameters, apart from a short allow-list, and the same requests for many ids."""

from __future__ import annotations

import inspect
from typing import Any

from fxbroker import AsyncClient, Client
from sdk import _base
from sdk.wire import IDS_PER_REQUEST

RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
"""Sync name -> async name, as httpx names them."""

ONLY_CLIENT = {
    # A property that may ask the service; AsyncClient awaits get_ws_url() (both have it).
    "ws_url",
}

ONLY_ASYNC = {
    # Results pushed over the WebSocket: a polling client has nothing to resolve a handle.
    "submit",
    "submit_task",
    "run_task",
    "watch_task",
    "wait_sent",
    "as_completed",
    "submit_requests",  # how many batches the submit queue behind submit() has sent
    "results",  # the ResultListener behind them
}

SYNC_IN_BOTH = {"create_batch", "on_close", "url", "default_endpoint_id", "config"}
"""Shared names that are not coroutines in AsyncClient either (no I/O)."""


def public(cls: type[Any], instance_attrs: set[str]) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")} | instance_attrs
    names |= {n for n in (*RENAMED, *RENAMED.values()) if n in cls.__dict__}
    return names


def test_the_public_method_sets_match_apart_from_the_allow_list() -> None:
    sync = public(Client, {"config", "task_group_id"})
    asynchronous = public(AsyncClient, {"config", "task_group_id", "results"})
    renamed_sync = {RENAMED.get(name, name) for name in sync}
    assert renamed_sync - ONLY_CLIENT == asynchronous - ONLY_ASYNC
    assert ONLY_CLIENT <= sync and ONLY_ASYNC <= asynchronous


def test_shared_methods_take_the_same_parameters_and_await_only_io() -> None:
    shared = (set(vars(Client)) & set(vars(AsyncClient))) - {"__init__"}
    shared = {n for n in shared if not n.startswith("_")}
    assert {"wait", "get_tasks", "cancel_tasks", "get_batch_result", "run"} <= shared
    for name in sorted(shared):
        sync, asynchronous = getattr(Client, name), getattr(AsyncClient, name)
        if isinstance(sync, property):
            assert isinstance(asynchronous, property), name
            continue
        assert inspect.signature(sync) == inspect.signature(asynchronous) or name == "run", name
        assert inspect.iscoroutinefunction(asynchronous) == (name not in SYNC_IN_BOTH), name
    run_sync = inspect.signature(Client.run).parameters
    run_async = inspect.signature(AsyncClient.run).parameters
    assert list(run_sync) == list(run_async)  # only the return differs: a task id / the result


def test_many_ids_are_asked_about_in_requests_of_at_most_a_thousand() -> None:
    ids = [f"t{i}" for i in range(2 * IDS_PER_REQUEST + 1)]
    for calls in (_base.get_batch_result(ids + ids[:5]), _base.get_tasks(ids)):
        sizes = [len(r.json["task_ids"]) for r in calls.requests]
        assert sizes == [IDS_PER_REQUEST, IDS_PER_REQUEST, 1]
        assert [t for r in calls.requests for t in r.json["task_ids"]] == ids
    cancels = _base.cancel_many(ids)
    assert [r.path for r in cancels.requests] == ["/v1/tasks/cancel"] * 3
    cancelled = {"outcome": "cancelled"}
    answers = [{"tasks": dict.fromkeys(r.json["task_ids"], cancelled)} for r in cancels.requests]
    assert cancels.merge(answers) == dict.fromkeys(ids, "cancelled")
    assert _base.get_tasks([]).requests == []
    assert _base.get_tasks([]).merge([]) == {}
