"""Two ``fxbroker web`` and two ``fxbroker ws`` processes, and two agents of one endpoint, one
on each ws copy; clients of all three styles spread across the copies, round robin.

Every result reaches its client once (taps subscribed to each task group on both ws copies
count what the service pushes, task by task); cancel and reload work through the copy that
did not submit; sharing and allow-list changes made through one web copy take effect
through the other within the catalog cache time (``FXBROKER_CATALOG_CACHE_S``, set short
here), polled with a deadline, never waited out by a fixed sleep. Last, one ws copy is
SIGKILLed mid-run: the agent and the push clients on it move to the other, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from fxbroker import AsyncClient, Client, Executor
from fxbroker.workload import square
from sdk import _base
from sdk.errors import APIError
from sdk.states import TERMINAL_STATES
from tests.conftest import free_port, wait_for_port
from tests.e2e.processes import (
    ENDPOINT_NAME,
    FXBROKER,
    platform_database,
    stop_processes,
    wait_for_endpoint_id,
)
from tests.e2e.sockets import remote_ports
from tests.redis_urls import delete_keys
from tests.sdk.workload import nap, scale

COPIES = 2
N = 300
"""Tasks per client style."""
CACHE_S = 2.0
"""``FXBROKER_CATALOG_CACHE_S`` and ``FXBROKER_AUTH_CACHE_S`` of both web copies, and
``FXBROKER_WS_AUTH_CACHE_S`` of both ws copies."""
MARGIN_S = 10.0
"""What a change may take beyond the cache time on a busy machine."""
QUIET_S = 1.0
"""How long a tap keeps listening after it saw every task, for repeats."""
TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


@dataclass(frozen=True)
class Copies:
    web_urls: tuple[str, ...]
    ws_urls: tuple[str, ...]
    ws_ports: tuple[int, ...]
    token: str
    endpoint_id: str
    env: dict[str, str]
    ws: tuple[subprocess.Popen[bytes], ...]
    agents: tuple[subprocess.Popen[bytes], ...]

    def client(self, web: int, ws: int | None = None, *, token: str | None = None) -> Client:
        """A client of web copy ``web`` whose pushed results come from ws copy ``ws``."""
        return Client(
            url=self.web_urls[web % COPIES],
            token=token or self.token,
            ws_url=self.ws_urls[(web if ws is None else ws) % COPIES],
        )

    def async_client(self, web: int, ws: int, **options: Any) -> AsyncClient:
        return AsyncClient(
            url=self.web_urls[web % COPIES],
            token=self.token,
            ws_url=self.ws_urls[ws % COPIES],
            endpoint_id=self.endpoint_id,
            **options,
        )


def _create_user(env: dict[str, str], name: str) -> str:
    return subprocess.run(
        [*FXBROKER, "user", "create", name], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def copies(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copies]:
    tmp = tmp_path_factory.mktemp("copies")
    prefix = f"fxc-{uuid.uuid4().hex[:10]}"
    web_ports = [free_port() for _ in range(COPIES)]
    ws_ports = [free_port() for _ in range(COPIES)]
    web_urls = tuple(f"http://127.0.0.1:{port}" for port in web_ports)
    ws_urls = tuple(f"ws://127.0.0.1:{port}" for port in ws_ports)
    db_gen = platform_database(tmp)
    procs: list[subprocess.Popen[bytes]] = []
    ws_procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "platform.log").open("wb")
    env = {
        **{k: v for k, v in os.environ.items() if k != "FXBROKER_WS_URL"},
        "DATABASE_URL": next(db_gen),
        "REDIS_URL": redis_url,
        "FXBROKER_KEY_PREFIX": prefix,
        "FXBROKER_WS_URL": ",".join(ws_urls),  # what the web copies announce
        "FXBROKER_WORKERS": "2",
        "FXBROKER_CATALOG_CACHE_S": str(CACHE_S),
        "FXBROKER_AUTH_CACHE_S": str(CACHE_S),
        "FXBROKER_WS_AUTH_CACHE_S": str(CACHE_S),
    }
    try:
        subprocess.run([*FXBROKER, "db", "upgrade"], env=env, check=True, capture_output=True)
        token = _create_user(env, "alice")
        for i in range(COPIES):
            web = subprocess.Popen(
                [*FXBROKER, "web", "--port", str(web_ports[i])], env=env, stdout=log, stderr=log
            )
            ws = subprocess.Popen(
                [*FXBROKER, "ws", "--port", str(ws_ports[i])],
                env={**env, "FXBROKER_WEB_URL": web_urls[i]},  # each ws asks its own web
                stdout=log, stderr=log,
            )  # fmt: skip
            procs += [web, ws]
            ws_procs.append(ws)
        for port in (*web_ports, *ws_ports):
            wait_for_port(port, 30)
        agent_base = {
            k: v
            for k, v in env.items()
            if k not in {"REDIS_URL", "DATABASE_URL", "FXBROKER_KEY_PREFIX"}
        }
        agents: list[subprocess.Popen[bytes]] = []
        for i in range(COPIES):
            home = tmp / f"agent{i}"
            ring = ",".join(ws_urls[(i + k) % COPIES] for k in range(COPIES))  # own copy first
            agent_env = {
                **agent_base,
                "FXBROKER_HOME": str(home),
                "FXBROKER_URL": web_urls[i],
                "FXBROKER_TOKEN": token,
                "FXBROKER_WS_URL": ring,
            }
            if agents:  # a second agent of the same endpoint: the first one's credential
                first = tmp / "agent0" / "endpoints" / ENDPOINT_NAME / "credential"
                agent_env["FXBROKER_CREDENTIAL"] = first.read_text().strip()
            agent = subprocess.Popen(
                [*FXBROKER, "endpoint", "start", ENDPOINT_NAME],
                env=agent_env, stdout=log, stderr=log,
            )  # fmt: skip
            procs.append(agent)
            agents.append(agent)
            endpoint_id = wait_for_endpoint_id(home, agent)
        yield Copies(
            web_urls, ws_urls, tuple(ws_ports), token, endpoint_id, env,
            tuple(ws_procs), tuple(agents),
        )  # fmt: skip
    finally:
        stop_processes(procs)
        log.close()
        db_gen.close()
        delete_keys(redis_url, prefix)


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``check`` until it holds; how long that took. Fails past ``timeout_s``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


# -- counting what the ws copies push -----------------------------------------------------


class Tap:
    """Subscribes to one task group on one ws copy from its start and counts, per task id,
    the results the copy pushes, until ``expected`` distinct tasks finished and nothing more
    came for :data:`QUIET_S`."""

    def __init__(self, ws_url: str, token: str, task_group_id: str, expected: int) -> None:
        self.url = _base.results_url(ws_url)
        self.token = token
        self.task_group_id = task_group_id
        self.expected = expected
        self.counts: Counter[str] = Counter()
        self.values: dict[str, Any] = {}

    async def run(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with connect(
            self.url, additional_headers=_base.auth_headers(self.token), max_size=None
        ) as ws:
            await ws.send(_base.subscribe_frame(self.task_group_id, "0"))
            while True:
                seen_all = len(self.counts) >= self.expected
                left = deadline - time.monotonic()
                assert left > 0, f"{self.url} pushed {len(self.counts)} of {self.expected}"
                try:
                    message = await asyncio.wait_for(ws.recv(), QUIET_S if seen_all else left)
                except TimeoutError:
                    if seen_all:
                        return
                    raise
                frame = _base.parse_frame(message)
                if isinstance(frame, _base.Results):
                    for item in frame.items:
                        if item["state"] in TERMINAL:
                            self.counts[item["task_id"]] += 1

    def repeats(self) -> dict[str, int]:
        return {task_id: n for task_id, n in self.counts.items() if n != 1}


def _taps(copies: Copies, group: str, expected: int) -> list[Tap]:
    return [Tap(url, copies.token, group, expected) for url in copies.ws_urls]


@contextlib.contextmanager
def _tapping(taps: list[Tap]) -> Iterator[None]:
    """Run the taps in a thread of their own while the block runs; check them after."""
    failures: list[BaseException] = []

    async def all_taps() -> None:
        await asyncio.gather(*(tap.run() for tap in taps))

    def serve() -> None:
        try:
            asyncio.run(all_taps())
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    thread.join(240)
    assert not thread.is_alive(), "the taps did not finish"
    if failures:
        raise failures[0]


def _new_group(copies: Copies, web: int) -> str:
    """A task group of alice's, made by one task submitted through web copy ``web``."""
    with copies.client(web) as client:
        fid = client.register_function(square)
        task_id = client.run(2, endpoint_id=copies.endpoint_id, function_id=fid)
        client.wait([task_id], timeout_s=60, poll_s=0.05)
        assert client.task_group_id is not None
        return client.task_group_id


# -- the tests -----------------------------------------------------------------------------


def test_each_agent_serves_through_its_own_ws_copy(copies: Copies) -> None:
    for url in copies.web_urls:  # and every web copy tells clients of both ws copies
        info = httpx.get(url + "/v1/info", headers={"Authorization": f"Bearer {copies.token}"})
        assert info.json()["ws_url"] == ",".join(copies.ws_urls)
    for agent, port in zip(copies.agents, copies.ws_ports, strict=True):
        _until(lambda: port in remote_ports(agent.pid), 30, f"agent {agent.pid} on {port}")  # noqa: B023


def test_polling_clients_spread_over_both_web_copies(copies: Copies) -> None:
    """Each client submits half the tasks through its copy and polls the other half's
    results through the same copy: what one copy queued, the other reads."""
    clients = [copies.client(i) for i in range(COPIES)]
    try:
        fid = clients[0].register_function(square)
        submitted: list[list[str]] = []
        for i, client in enumerate(clients):
            batch = client.create_batch()
            for x in range(i, N, COPIES):
                batch.add(fid, args=(x,))
            submitted.append(client.batch_run(copies.endpoint_id, batch))
        for i, client in enumerate(clients):
            others = submitted[(i + 1) % COPIES]
            results = client.wait(others, timeout_s=120, poll_s=0.1)
            xs = range((i + 1) % COPIES, N, COPIES)
            assert [results[t].get("result") for t in others] == [x * x for x in xs]
    finally:
        for client in clients:
            client.close()


def test_async_clients_get_every_result_once_across_copies(copies: Copies) -> None:
    """Two AsyncClients of one task group: each submits through one web copy and takes its
    pushed results from the other ws copy; taps on both ws copies count each result once."""
    group = _new_group(copies, 0)
    taps = _taps(copies, group, N + 1)

    async def main() -> tuple[list[int], list[int]]:
        clients = [copies.async_client(i, i + 1, task_group_id=group) for i in range(COPIES)]
        try:
            fid = await clients[0].register_function(square)
            runs = [
                clients[x % COPIES].run(x, endpoint_id=copies.endpoint_id, function_id=fid)
                for x in range(N)
            ]
            values = await asyncio.wait_for(asyncio.gather(*runs), 120)
            return list(values), [c.results.subscriptions for c in clients]
        finally:
            for client in clients:
                await client.aclose()

    with _tapping(taps):
        values, subscriptions = asyncio.run(main())
    assert values == [x * x for x in range(N)]
    assert subscriptions == [1, 1]  # no reconnect: nothing was replayed
    for tap in taps:
        assert len(tap.counts) == N + 1
        assert tap.repeats() == {}, tap.url


def test_executors_get_every_result_once_across_copies(copies: Copies) -> None:
    group = _new_group(copies, 1)
    taps = _taps(copies, group, N + 1)
    clients = [copies.client(i) for i in range(COPIES)]
    try:
        with _tapping(taps):
            executors = [
                Executor(copies.endpoint_id, client=c, task_group_id=group) for c in clients
            ]
            try:
                futures = [executors[x % COPIES].submit(scale, x, by=3) for x in range(N)]
                assert [f.result(timeout=120) for f in futures] == [3 * x for x in range(N)]
            finally:
                for ex in executors:
                    ex.shutdown()
    finally:
        for client in clients:
            client.close()
    for tap in taps:
        assert len(tap.counts) == N + 1
        assert tap.repeats() == {}, tap.url


def test_cancel_through_the_other_web_copy(copies: Copies) -> None:
    """Naps of 60 s fill all four workers and queue more; cancelled through the web copy
    that did not submit them, every one ends cancelled long before its nap would."""
    with copies.client(0) as submitter, copies.client(1) as other:
        fid = submitter.register_function(nap)
        batch = submitter.create_batch()
        for _ in range(8):
            batch.add(fid, args=(60,))
        task_ids = submitter.batch_run(copies.endpoint_id, batch)
        _until(
            lambda: sum(t["state"] == "running" for t in other.get_tasks(task_ids).values()) >= 2,
            30,
            "naps running",
        )
        outcomes = other.cancel_tasks(task_ids)
        assert set(outcomes) == set(task_ids)
        assert set(outcomes.values()) <= {"cancelled", "interrupt_requested"}, outcomes
        _until(
            lambda: all(t["state"] == "cancelled" for t in submitter.get_tasks(task_ids).values()),
            30,
            "every nap cancelled",
        )


def test_reload_and_watch_through_the_other_copies(copies: Copies) -> None:
    """Tasks submitted through web copy 0 are picked up, finished or not, by an Executor's
    ``reload_tasks`` through web and ws copy 1, and by an AsyncClient's watch through ws 1."""
    with copies.client(0) as submitter:
        fid = submitter.register_function(nap)
        batch = submitter.create_batch()
        seconds = [0.01 * (i % 10) for i in range(40)] + [1.5] * 4
        for s in seconds:
            batch.add(fid, args=(s,))
        task_ids = submitter.batch_run(copies.endpoint_id, batch)
        group = submitter.task_group_id
    assert group is not None
    with copies.client(1) as client:
        with Executor(copies.endpoint_id, client=client, task_group_id=group) as ex:
            futures = ex.reload_tasks()
            assert [f.task_id for f in futures] == task_ids
            assert [f.result(timeout=60) for f in futures] == seconds

    async def watch() -> list[float]:
        async with copies.async_client(0, 1, task_group_id=group) as ac:
            handles = [ac.watch_task(t) for t in task_ids]
            return list(await asyncio.wait_for(asyncio.gather(*handles), 60))

    assert asyncio.run(watch()) == seconds


def _put(url: str, token: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.put(url + path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


def _submits(copies: Copies, web: int, token: str, function_id: str) -> bool:
    """True if a submit through web copy ``web`` is accepted; False if refused (403/404)."""
    with copies.client(web, token=token) as client:
        try:
            client.run(3, endpoint_id=copies.endpoint_id, function_id=function_id)
        except APIError as exc:
            assert exc.status in (403, 404), exc
            return False
    return True


def test_sharing_and_allow_lists_changed_through_one_copy_hold_on_the_other(
    copies: Copies,
) -> None:
    bob = _create_user(copies.env, f"bob-{uuid.uuid4().hex[:6]}")
    bob_name = httpx.get(
        copies.web_urls[0] + "/v1/whoami", headers={"Authorization": f"Bearer {bob}"}
    ).json()["name"]
    web_a = copies.web_urls[0]
    endpoint = f"/v1/endpoints/{copies.endpoint_id}"
    with copies.client(0) as alice:
        fid = alice.register_function(scale)
        other_fid = alice.register_function(square)
    within = CACHE_S + MARGIN_S
    # Copy B reads (and caches) the function and endpoint as not bob's.
    assert not _submits(copies, 1, bob, fid)

    _put(
        web_a, copies.token, f"/v1/functions/{fid}/sharing", {"public": False, "users": [bob_name]}
    )
    _put(web_a, copies.token, f"{endpoint}/sharing", {"users": [bob_name]})
    _until(lambda: _submits(copies, 1, bob, fid), within, "a share made on A seen on B")

    function_sharing = f"/v1/functions/{fid}/sharing"
    _put(web_a, copies.token, function_sharing, {"public": False, "users": []})
    _until(lambda: not _submits(copies, 1, bob, fid), within, "a function unshared on A, on B")

    _put(web_a, copies.token, function_sharing, {"public": False, "users": [bob_name]})
    _until(lambda: _submits(copies, 1, bob, fid), within, "a function shared again on A, on B")
    _put(web_a, copies.token, f"{endpoint}/sharing", {"users": []})
    _until(lambda: not _submits(copies, 1, bob, fid), within, "an endpoint unshared on A, on B")

    assert _submits(copies, 1, copies.token, fid)  # B has the endpoint's allow-list cached
    try:
        _put(web_a, copies.token, f"{endpoint}/allowed_functions", {"function_ids": [other_fid]})
        _until(
            lambda: not _submits(copies, 1, copies.token, fid),
            within,
            "an allow-list set on A enforced on B",
        )
    finally:
        _put(web_a, copies.token, f"{endpoint}/allowed_functions", {"function_ids": []})
    _until(
        lambda: _submits(copies, 1, copies.token, fid), within, "an allow-list cleared on A on B"
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # SIGKILL: no goodbye to its agents and clients
    proc.wait(10)


def test_a_ws_copy_killed_mid_run_loses_nothing(copies: Copies) -> None:
    """ws copy 0 is SIGKILLed once a quarter of the results reached the AsyncClient: agent 0
    and both push clients (told both copies, copy 0 first) move to copy 1, and every task's
    result reaches its client, counted once by a tap on copy 1. Runs last: the copy stays
    dead."""
    ring = ",".join(copies.ws_urls)
    seconds = [0.04 + x / 100_000 for x in range(N)]  # each value its own
    async_group, executor_group = _new_group(copies, 0), _new_group(copies, 1)
    taps = [Tap(copies.ws_urls[1], copies.token, g, N + 1) for g in (async_group, executor_group)]

    async def pushed() -> tuple[list[float], int]:
        async with AsyncClient(
            url=copies.web_urls[0],
            token=copies.token,
            ws_url=ring,
            endpoint_id=copies.endpoint_id,
            task_group_id=async_group,
        ) as ac:
            fid = await ac.register_function(nap)
            handles = [ac.submit(s, function_id=fid) for s in seconds]
            quarter, done = asyncio.Event(), Counter[str]()

            def count(_: asyncio.Future[Any]) -> None:
                done["results"] += 1
                if done["results"] >= N // 4:
                    quarter.set()

            for handle in handles:
                handle.future.add_done_callback(count)
            await asyncio.wait_for(quarter.wait(), 120)
            assert ac.results.subscriptions == 1
            _kill(copies.ws[0])
            assert done["results"] < N, "the run was over before the kill"
            values = await asyncio.wait_for(asyncio.gather(*handles), 120)
            return list(values), ac.results.subscriptions

    with _tapping(taps), Client(url=copies.web_urls[1], token=copies.token, ws_url=ring) as sync:
        with Executor(copies.endpoint_id, client=sync, task_group_id=executor_group) as ex:
            futures = [ex.submit(nap, s) for s in seconds]
            values, subscriptions = asyncio.run(pushed())
            assert [f.result(timeout=120) for f in futures] == seconds
    assert values == seconds
    assert subscriptions == 2  # resubscribed once, on copy 1
    agent = copies.agents[0]
    _until(lambda: copies.ws_ports[1] in remote_ports(agent.pid), 30, "agent 0 on ws copy 1")
    for tap in taps:
        assert len(tap.counts) == N + 1
        assert tap.repeats() == {}, tap.task_group_id
