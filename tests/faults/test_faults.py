"""The fault table of issue 10, each row a fault injected into real processes in the middle of
2,000 tasks through the Executor and 2,000 through ``batch_run`` + polling, and what must
hold afterwards (DESIGN §4):

- Redis stopped (SIGTERM) and restarted with AOF, or killed (SIGKILL) with ``appendfsync
  always``: every task completes once with the right value, no process exits, clients see at
  most a delay (no error reaches them). A task runs again only where its lease lapsed.
- web service killed and restarted: every submitted future completes once; a batch in flight
  is retried by the SDK with the same Idempotency-Key, neither lost nor duplicated.
- ws_service killed and restarted: every result delivered once; no task run twice. The
  agent, which reaches the platform only through that ws_service's gateway, reconnects to
  it and keeps the tasks it was running (their leases had not lapsed).
- agent killed and a new one started: every task completes once (redelivery), attempts counted.
- PostgreSQL restarted: submits with warm caches keep working; the rest answer 503 and
  recover by themselves.
- a client process killed, and a new one reattached with ``reload_tasks``: every result of
  the task group is there.

Every row starts its own private Redis with AOF on free ports, and the platform as
``fxbroker web|ws|endpoint start`` processes; the PostgreSQL row its own PostgreSQL cluster.
The environment variable ``FXBROKER_TEST_REDIS`` picks that Redis (read when a row starts):

- unset or ``single``: one ``redis-server`` (:class:`~tests.private_redis.PrivateRedis`);
- ``cluster``: a Redis Cluster of :data:`CLUSTER_MASTERS` masters, no replicas, AOF on every
  node (:class:`~tests.private_cluster.PrivateCluster`); the Redis rows stop or kill every
  node at once and start them again. Each row then notes ``"redis": "cluster of 3 masters"``.

Any other value is an error, not a quiet fallback. The figures of each row go to
``tests/faults/results/faults.json`` and the session summary; ``python -m tests.faults`` runs
the module and prints them as a table.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fxbroker import Client, Executor
from sdk import _base, wire
from sdk.keys import Keys
from sdk.messages import hash_field
from tests.faults.load import StyleFigures, count_duplicates_and_reruns
from tests.faults.platform import ROOT, Piece, Platform
from tests.faults.postgres import PrivatePostgres, postgres_bindir
from tests.faults.run import DOWN_S, Row, drive
from tests.faults.work import count_runs, record_square
from tests.private_cluster import PrivateCluster, require_redis_cli
from tests.private_redis import PrivateRedis, require_redis_server
from tests.redis_urls import sync_redis

N = 2000
"""Tasks per client style in each row (the issue's figure)."""
WINDOW = 400
"""Tasks a style keeps outstanding: submitting goes on while results come back."""
TRIGGER = 150
"""The fault comes once each style has this many results."""
DEADLINE_S = 180.0
WEB_ROW_HOLD_S = 0.005
"""How long a row's loads may take, fault included, before what is left counts as lost."""
SHORT_LEASE_MS = 3000
"""The agent row's lease (the gateway's): a killed agent's tasks are claimed again after it."""
HOLD_S = 2.0
"""How long the agent row's held task runs: it is still running when its agent is killed."""

pytestmark = [pytest.mark.faults, pytest.mark.timeout(DEADLINE_S + 180)]

Record = Callable[[Row], None]

REDIS_KIND_VARIABLE = "FXBROKER_TEST_REDIS"
"""``single`` (the default) or ``cluster``: which private Redis each row runs on."""
CLUSTER_MASTERS = 3
"""Masters of the private Redis Cluster under ``FXBROKER_TEST_REDIS=cluster``."""

RedisServer = PrivateRedis | PrivateCluster


def private_redis_server(data_dir: Path, *, appendfsync: str) -> RedisServer:
    """The private Redis of a row, not yet started: one ``redis-server`` or a cluster, as
    ``FXBROKER_TEST_REDIS`` says (see the module docstring); AOF with ``appendfsync``."""
    require_redis_server()
    kind = os.environ.get(REDIS_KIND_VARIABLE, "") or "single"
    if kind == "single":
        return PrivateRedis(data_dir, appendfsync=appendfsync)
    if kind == "cluster":
        require_redis_cli()
        return PrivateCluster(data_dir, masters=CLUSTER_MASTERS, appendfsync=appendfsync)
    raise ValueError(f"{REDIS_KIND_VARIABLE} must be 'single' or 'cluster', not {kind!r}")


def note_redis(row: Row, redis_server: RedisServer) -> Row:
    """Say in the row's notes when it ran on a cluster (a single Redis adds nothing)."""
    if isinstance(redis_server, PrivateCluster):
        row.notes["redis"] = f"cluster of {len(redis_server.ports)} masters"
    return row


@contextmanager
def running(
    tmp_path: Path,
    database_url: str,
    *,
    appendfsync: str = "everysec",
    service_env: dict[str, str] | None = None,
) -> Iterator[tuple[RedisServer, Platform]]:
    with private_redis_server(tmp_path / "redis", appendfsync=appendfsync) as redis_server:
        with Platform(
            redis_url=redis_server.url, database_url=database_url, home=tmp_path,
            service_env=service_env,
        ) as platform:  # fmt: skip
            yield redis_server, platform


def assert_held(row: Row, platform: Platform, *, reruns_allowed: bool) -> None:
    """Every task of both styles completed once with the right value, no client saw an error,
    every platform process is alive; re-runs only where a lease lapsed (or none at all)."""
    assert row.dead_after == {}, f"{row.line()}\n{platform.log_tail()}"
    for s in row.styles:
        where = f"{s.style}: {s}"
        assert s.submitted == row.tasks_per_style, where
        assert (s.right, s.failed, s.raised, s.lost) == (s.submitted, 0, 0, 0), where
        assert s.duplicated == 0, where
        assert s.client_errors == 0, where
        assert s.unexplained_reruns == 0, where
        if not reruns_allowed:
            assert s.reruns == 0, where


def restart(platform: Platform, piece: Piece) -> Callable[[], float]:
    def inject() -> float:
        platform.kill_piece(piece)
        time.sleep(DOWN_S)  # the outage the row is about, not a wait for a condition
        return platform.start_piece(piece)

    return inject


def _drive(platform: Platform, redis_server: RedisServer, runs_dir: Path, fault: str,
           inject: Callable[[], float], hold_s: float = 0.0) -> Row:  # fmt: skip
    row = drive(
        platform, fault=fault, inject=inject, redis_url=redis_server.url, runs_dir=runs_dir,
        n=N, window=WINDOW, trigger=TRIGGER, deadline_s=DEADLINE_S, hold_s=hold_s,
    )  # fmt: skip
    return note_redis(row, redis_server)


@pytest.mark.parametrize(
    ("fault", "appendfsync", "kill"),
    [("redis SIGTERM + restart (AOF)", "everysec", False),
     ("redis SIGKILL + restart (appendfsync always)", "always", True)],
    ids=["sigterm", "sigkill"],
)  # fmt: skip
def test_redis_restart_loses_nothing_and_kills_nothing(
    fault: str, appendfsync: str, kill: bool, tmp_path: Path, database_url: str, runs_dir: Path,
    fault_rows: Record,
) -> None:  # fmt: skip
    with running(tmp_path, database_url, appendfsync=appendfsync) as (redis_server, platform):

        def inject() -> float:
            redis_server.restart(down_s=DOWN_S, kill=kill)  # SIGTERM or SIGKILL, down, start
            # (on a cluster: every node, and back once each reports cluster_state:ok)
            return time.monotonic()

        row = _drive(platform, redis_server, runs_dir, fault, inject)
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=True)


def test_web_service_killed_and_restarted(
    tmp_path: Path, database_url: str, runs_dir: Path, fault_rows: Record
) -> None:
    with running(tmp_path, database_url) as (redis_server, platform):
        # Each task takes 5 ms: the Executor style, far faster than the polling one, would
        # otherwise have submitted its 2,000 before the polling style has its first results.
        row = _drive(platform, redis_server, runs_dir, "web SIGKILL + restart",
                     restart(platform, "web"), hold_s=WEB_ROW_HOLD_S)  # fmt: skip
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=False)
        # The kill came while both styles were still submitting: batches met the outage.
        assert all(n < N for n in row.notes["submitted_at_fault"].values()), row.notes


def test_ws_service_killed_and_restarted(
    tmp_path: Path, database_url: str, runs_dir: Path, fault_rows: Record
) -> None:
    with running(tmp_path, database_url) as (redis_server, platform):
        row = _drive(platform, redis_server, runs_dir, "ws_service SIGKILL + restart",
                     restart(platform, "ws"))  # fmt: skip
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=False)


def test_agent_killed_and_a_new_one_started(
    tmp_path: Path, database_url: str, runs_dir: Path, fault_rows: Record
) -> None:
    """Besides the loads, one task that takes :data:`HOLD_S` is surely running when the agent
    dies: it must be claimed again after its lease, its attempt counted, and complete."""
    service_env = {"FXBROKER_LEASE_MS": str(SHORT_LEASE_MS)}
    runs = runs_dir / "runs.txt"
    held: list[str] = []
    with running(tmp_path, database_url, service_env=service_env) as (redis_server, platform):
        client = Client(platform.url, platform.token)

        def inject() -> float:
            batch = client.create_batch()
            batch.add(client.register_function(record_square), args=("s", 7, str(runs), HOLD_S))
            held.extend(client.batch_run(platform.endpoint_id, batch))
            started_by = time.monotonic() + DEADLINE_S / 2
            while count_runs(str(runs)).get(("s", 7), 0) == 0:  # until it runs
                if time.monotonic() > started_by:
                    raise TimeoutError("the held task never started")
                time.sleep(0.01)
            return restart(platform, "agent")()

        with client:
            row = _drive(platform, redis_server, runs_dir, "agent SIGKILL + new agent", inject)
            [status] = client.wait(held, timeout_s=DEADLINE_S, poll_s=0.2).values()
        attempts = _attempts(platform, redis_server, held[0])
        row.notes["held_task"] = {
            "result": status.get("result"), "attempts": attempts,
            "runs": count_runs(str(runs)).get(("s", 7), 0),
        }  # fmt: skip
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=True)
        assert row.notes["held_task"] == {"result": 49, "attempts": 2, "runs": 2}, row.notes
        assert sum(s.reruns for s in row.styles) <= sum(s.lapsed for s in row.styles), row.line()


def _attempts(platform: Platform, redis_server: RedisServer, task_id: str) -> int:
    store = sync_redis(redis_server.url, decode_responses=True)
    try:
        return int(store.hget(Keys(platform.prefix).task(task_id), hash_field("attempts")) or 0)
    finally:
        store.close()


def _register_cold(platform: Platform) -> httpx.Response:
    """Register a function the web service has never seen (no cache can answer it)."""

    def fresh(x: int) -> int:
        return x

    request = _base.register_function(fresh, function_name=f"cold-{uuid.uuid4().hex[:8]}")
    return httpx.request(
        request.method, platform.url + request.path, json=request.json,
        headers=_base.auth_headers(platform.token), timeout=10,
    )  # fmt: skip


def test_postgres_restart_keeps_warm_submits_working(
    tmp_path: Path, runs_dir: Path, fault_rows: Record
) -> None:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
    probes: dict[str, Any] = {}
    with PrivatePostgres(bindir) as pg, running(tmp_path, pg.url) as (redis_server, platform):

        def inject() -> float:
            pg.stop()
            cold = _register_cold(platform)
            probes["cold_while_down"] = {
                "status": cold.status_code,
                "retry_after": cold.headers.get("retry-after"),
                "code": _json(cold).get("code"),
            }
            ready = httpx.get(platform.url + "/readyz", timeout=10)
            probes["readyz_while_down"] = ready.status_code
            time.sleep(DOWN_S)  # the outage the row is about
            pg.start()
            return time.monotonic()

        row = _drive(platform, redis_server, runs_dir, "PostgreSQL restart", inject)
        recovered_by = time.monotonic() + 60
        while (cold := _register_cold(platform)).status_code != 200:
            if time.monotonic() > recovered_by:
                break
            time.sleep(0.2)
        probes["cold_after"] = cold.status_code
        row.notes.update(probes)
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=False)
        assert probes["cold_while_down"]["status"] == 503, probes
        assert probes["cold_while_down"]["code"] == "SERVICE_UNAVAILABLE", probes
        assert probes["cold_while_down"]["retry_after"], probes
        assert probes["readyz_while_down"] == 503, probes
        assert probes["cold_after"] == 200, probes


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_report(child: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The child's one JSON line, or an error when it does not come within ``timeout_s``."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(child.stdout.readline() if child.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout_s)
    if not lines or not lines[0]:
        raise TimeoutError(f"the client process reported nothing within {timeout_s:g} s")
    report: dict[str, Any] = json.loads(lines[0])
    return report


def test_a_killed_client_is_restarted_with_reload_tasks(
    tmp_path: Path, database_url: str, runs_dir: Path, fault_rows: Record
) -> None:
    runs = runs_dir / "runs.txt"
    with running(tmp_path, database_url) as (redis_server, platform):
        begun = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "-m", "tests.faults.client", platform.url, platform.token,
             platform.ws_url, platform.endpoint_id, str(runs), str(N)],
            cwd=ROOT, env=platform.env, stdout=subprocess.PIPE, text=True,
        ) as child:  # fmt: skip
            try:
                report = _read_report(child, DEADLINE_S)
                trigger_by = time.monotonic() + DEADLINE_S
                while min(_runs_per_tag(runs).values(), default=0) < TRIGGER:
                    if time.monotonic() > trigger_by:
                        raise TimeoutError("the tasks of the killed client did not start")
                    time.sleep(0.01)
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(30)
        killed = time.monotonic()
        row = note_redis(Row("client SIGKILL + reload_tasks", N, fault_at_s=killed - begun),
                         redis_server)  # fmt: skip
        deadline = killed + DEADLINE_S
        with Client(platform.url, platform.token, ws_url=platform.ws_url) as client:
            restarted = time.monotonic()
            row.down_s = restarted - killed
            row.styles.append(_reload_executor(platform, client, report, restarted, deadline))
            row.styles.append(_reload_polling(client, report, restarted, deadline))
        for figures, group, ids, tag in (
            (row.styles[0], report["executor_group"], report["executor_ids"], "e"),
            (row.styles[1], report["polling_group"], report["polling_ids"], "b"),
        ):
            count_duplicates_and_reruns(
                platform, figures, task_group_id=group, task_of=dict(enumerate(ids)),
                runs=str(runs), tag=tag, redis_url=redis_server.url,
            )  # fmt: skip
        row.dead_after = platform.dead_pieces()
        fault_rows(row)
        assert_held(row, platform, reruns_allowed=False)


def _runs_per_tag(runs: Path) -> dict[str, int]:
    per_tag: dict[str, int] = {"e": 0, "b": 0}
    for tag, _ in count_runs(str(runs)):
        per_tag[tag] += 1
    return per_tag


def _reload_executor(
    platform: Platform, client: Client, report: dict[str, Any], restarted: float, deadline: float
) -> StyleFigures:
    """A new Executor reattached to the killed client's task group: every future resolves
    to the value of its x."""
    figures = StyleFigures("Executor reload_tasks", submitted=len(report["executor_ids"]))
    ex = Executor(platform.endpoint_id, client=client, task_group_id=report["executor_group"])
    first: list[float] = []
    try:
        futures = ex.reload_tasks()
        for future in futures:
            future.add_done_callback(lambda _: first.append(time.monotonic()))
        concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        by_id = {f.task_id: f for f in futures}
        for x, task_id in enumerate(report["executor_ids"]):
            found = by_id.get(task_id)
            if found is None or not found.done():
                figures.lost += 1
            elif found.cancelled():
                figures.failed += 1
            elif (error := found.exception()) is not None:
                figures.failed += 1
                figures.note(error)
            elif found.result() == x * x:
                figures.right += 1
            else:
                figures.failed += 1
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    figures.recovery_s = (min(first) - restarted) if first else None
    return figures


def _reload_polling(
    client: Client, report: dict[str, Any], restarted: float, deadline: float
) -> StyleFigures:
    """A new client reads the killed client's task group and polls every task of it."""
    ids: list[str] = report["polling_ids"]
    figures = StyleFigures("batch_run+poll task group", submitted=len(ids))
    listed = _group_task_ids(client, report["polling_group"])
    x_of = {task_id: x for x, task_id in enumerate(ids)}
    figures.lost += len(set(ids) - set(listed))
    pending = [t for t in listed if t in x_of]
    while pending and time.monotonic() < deadline:
        results = client.get_batch_result(pending)
        for task_id, status in results.items():
            if status["pending"]:
                continue
            if figures.recovery_s is None:
                figures.recovery_s = time.monotonic() - restarted
            x = x_of[task_id]
            if "exception" not in status and status.get("result") == x * x:
                figures.right += 1
            else:
                figures.failed += 1
        pending = [t for t in pending if results[t]["pending"]]
        if pending:
            time.sleep(0.2)
    figures.lost += len(pending)
    return figures


def _group_task_ids(client: Client, group: str) -> list[str]:
    """Every task id of the group, page by page, in submission order."""
    ids: list[str] = []
    while True:
        page = client.get_task_group(group, offset=len(ids), limit=wire.GROUP_PAGE_MAX)
        ids += [t["task_id"] for t in page["tasks"]]
        if not page["tasks"] or len(ids) >= int(page["total"]):
            return ids
