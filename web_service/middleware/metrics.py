"""Prometheus metrics of one web process, served at ``GET /metrics`` (no token).

* ``fxbroker_http_requests_total{method, route, status}`` and
  ``fxbroker_http_request_duration_seconds{method, route}``: every HTTP request, labelled by
  its route template (``/v1/tasks/{task_id}``; ``unmatched`` for unknown paths), so the label
  set stays bounded whatever the paths.
* ``fxbroker_tasks_submitted_total`` and ``fxbroker_tasks_cancelled_total``: tasks this
  process queued, and queued tasks it cancelled.
* ``fxbroker_tasks{state}``: computed on scrape from the endpoint task streams (one SQL query
  for at most ``MAX_SCRAPED_ENDPOINTS`` endpoint ids, one Redis round trip):
  ``waiting-for-ep`` counts entries no agent has read yet, ``running`` those agents hold.
  Finished tasks are counted by the agents, which write those states.
* ``fxbroker_endpoints_online``: endpoints of those with a live heartbeat.

Each app has a registry of its own, so several apps in one process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk.states import TaskState

MAX_SCRAPED_ENDPOINTS = 10_000
UNMATCHED = "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fxbroker_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fxbroker_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.tasks_submitted = Counter(
            "fxbroker_tasks_submitted", "Tasks queued by this process", registry=self.registry
        )
        self.tasks_cancelled = Counter(
            "fxbroker_tasks_cancelled",
            "Queued tasks cancelled by this process",
            registry=self.registry,
        )
        self.tasks = Gauge(
            "fxbroker_tasks",
            "Tasks on endpoint streams by state, at the last scrape",
            ["state"],
            registry=self.registry,
        )
        self.endpoints_online = Gauge(
            "fxbroker_endpoints_online",
            "Endpoints with a live agent heartbeat, at the last scrape",
            registry=self.registry,
        )

    def set_task_states(self, *, waiting: int, running: int, online: int) -> None:
        self.tasks.labels(TaskState.WAITING.value).set(waiting)
        self.tasks.labels(TaskState.RUNNING.value).set(running)
        self.endpoints_online.set(online)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route ``scope`` goes to (a partial match counts): the one
    the router chose, when the request reached it; else found the router's way, route by
    route (16 us for 62 routes: a request refused before routing, or none matched)."""
    chosen = scope.get("route")
    if chosen is not None:
        return str(getattr(chosen, "path", UNMATCHED))
    partial = UNMATCHED
    for route in routes:
        match, _ = route.matches(scope)
        path = getattr(route, "path", UNMATCHED)
        if match is Match.FULL:
            return str(path)
        if match is Match.PARTIAL and partial == UNMATCHED:
            partial = str(path)
    return partial


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = route_template(self.routes, scope)
            method = str(scope["method"])
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
