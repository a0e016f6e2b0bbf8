"""The parsl engine: a real agent through the gateway hands its ``def`` tasks to a real
Parsl ``HighThroughputExecutor`` whose ``LocalProvider`` starts one block of two workers on
this machine (every port on loopback, the run directory the test's own), and gets their
outcomes back as the process engine would give them: results, a raise with its remote
traceback and output, a walltime as ``WalltimeExceeded``, a lost worker as ``WorkerLost``,
and a SIGTERM that hands the tasks in flight back and ends Parsl's workers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from endpoint_agent import Agent, AgentSettings, run_agent
from endpoint_agent.engines import make_engine, run_one
from endpoint_agent.parsl_engine import LABEL, ParslEngine, load_config
from endpoint_agent.worker import Call
from sdk.serialize import pack_payload
from sdk.states import TaskState
from service_common.errors import SettingsError
from tests.agent.gateway_stack import (
    GatewayEndpoint,
    assert_cancelled,
    assert_engine_run,
    publish_cancel,
    settings_for,
    until,
)
from tests.agent.helpers import EXIT, HOLD, LOUD, SLEEPY, SQUARE, Gate
from tests.engine_sites import PARSL_EXAMPLES, PARSL_WORKERS, REPO, parsl_config

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Parsl config of this machine (:func:`parsl_config`), its workers able to import
    fxbroker (``PYTHONPATH``, which the LocalProvider's workers inherit)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(tmp_path)  # anything Parsl writes outside its run directory lands here
    return parsl_config(tmp_path)


def parsl_settings(endpoint: GatewayEndpoint, config: Path, **overrides: Any) -> AgentSettings:
    options: dict[str, Any] = {
        "engine": "parsl",
        "workers": PARSL_WORKERS,
        "parsl_config": str(config),
        "parsl_run_dir": str(config.parent / "runinfo"),
    }
    options.update(overrides)
    return settings_for(endpoint, **options)


def worker_pids(run_dir: Path) -> list[int]:
    """The pids of the Parsl worker processes of the engine's block, from the process table:
    children of the ``process_worker_pool.py`` launched with the run directory's log dir."""
    pools = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"process_worker_pool" in part for part in cmdline) and any(
            str(run_dir).encode() in part for part in cmdline
        ):
            pools.append(int(entry.name))
    return pools


def parsl_listens_on() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the TCP sockets of this process's Parsl interchange (its worker ports)
    and of this process itself (the HTE's ports to the interchange, and the test's own
    servers) listen on, from ``/proc``."""
    interchanges = [
        entry
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and _parent(entry) == os.getpid()
        and b"interchange" in _read(entry / "cmdline")  # "parsl: HTEX interchange"
    ]
    assert len(interchanges) == 1, "one interchange runs, a child of the agent"
    inodes: set[str] = set()
    for entry in [*interchanges, Path("/proc") / str(os.getpid())]:
        for fd in (entry / "fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addresses.add(_address(fields[1].rsplit(":", 1)[0]))
    return addresses


def _address(hexed: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as ``/proc/net/tcp[6]`` writes it: 32-bit words, each little-endian."""
    raw = bytes.fromhex(hexed)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _parent(entry: Path) -> int:
    stat = _read(entry / "stat").decode()
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else -1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_thousand_tasks_a_raise_a_walltime_and_a_lost_worker(
    endpoint: GatewayEndpoint, site: Path
) -> None:
    square = await endpoint.register(SQUARE)
    loud = await endpoint.register(LOUD)
    sleepy = await endpoint.register(SLEEPY)
    leave = await endpoint.register(EXIT)
    task_ids = await endpoint.submit_many(square, [((i,), {}) for i in range(1000)])
    raised = await endpoint.submit(loud, "no luck")
    too_long = await endpoint.submit(sleepy, 30, walltime_s="1")
    exited = await endpoint.submit(leave, 3)

    settings = parsl_settings(endpoint, site, workers=4, drain_grace_s=0)
    async with Agent(settings) as agent:
        await asyncio.wait_for(agent.run(burst=True), timeout=180)
    run_dir = Path(settings.parsl_run_dir)
    assert (run_dir / "000" / LABEL).is_dir()  # Parsl's logs went where it was told
    await until(lambda: not worker_pids(run_dir), "Parsl's worker pool to end")

    await assert_engine_run(
        endpoint,
        task_ids,
        raised=raised,
        too_long=too_long,
        exited=exited,
        lost="failed in Parsl without an outcome",
    )


async def test_sigterm_hands_back_the_tasks_in_flight(
    endpoint: GatewayEndpoint, site: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(5)])
    settings = parsl_settings(endpoint, site, drain_grace_s=0)

    running = asyncio.create_task(run_agent(settings))

    async def both_started() -> bool:  # Parsl starts its block first: seconds, not a blpop's
        return bool(await endpoint.redis.llen(gate.started) >= PARSL_WORKERS)

    await until(both_started, "both Parsl workers to start a task")
    pids = await gate.wait_started(PARSL_WORKERS)  # both Parsl workers run one; three wait
    # Parsl listens on loopback only (IPv4, or IPv4 mapped in IPv6).
    listens = parsl_listens_on()
    assert listens
    assert all(a.is_loopback or getattr(a, "ipv4_mapped", None) == LOOPBACK for a in listens)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=60)

    for task_id in task_ids:
        fields = await endpoint.task(task_id)
        assert (fields["state"], fields.get("attempts", "0")) == (TaskState.WAITING, "0"), fields
    assert await endpoint.pending() == 0
    assert await endpoint.redis.xlen(endpoint.stream) == 5
    # Parsl could not stop the running tasks; its clean-up ended the workers running them.
    await until(lambda: not any(alive(int(pid)) for pid in pids), "the Parsl workers to end")
    assert not worker_pids(Path(settings.parsl_run_dir))
    # Parsl's DEBUG lines went to its own log, not to the agent's.
    assert not [r for r in caplog.records if r.name.startswith("parsl")]
    assert "Parsl task" in (Path(settings.parsl_run_dir) / "000" / "parsl.log").read_text()

    async with Agent(settings_for(endpoint, engine="thread", workers=5)) as agent:
        again = asyncio.create_task(agent.run(burst=True))
        await gate.wait_started(5)
        await gate.release(5)
        await asyncio.wait_for(again, timeout=30)
    for task_id in task_ids:
        assert await endpoint.result(task_id) is True
    await endpoint.assert_settled()


async def test_a_cancel_settles_the_task_and_parsl_runs_the_call_to_its_end(
    endpoint: GatewayEndpoint, site: Path, redis_url: str
) -> None:
    """The HTE cannot stop a task it was handed: the cancel settles the task at once, the
    call runs on in its Parsl worker (its outcome dropped), holding the agent's one slot,
    and the next task runs once it ends."""
    hold = await endpoint.register(HOLD)
    square = await endpoint.register(SQUARE)
    gate = Gate(endpoint)
    doomed = await endpoint.submit(hold, *gate.args(redis_url))

    async with Agent(parsl_settings(endpoint, site, workers=1)) as agent:
        running = asyncio.create_task(agent.run(burst=True))

        async def started() -> bool:
            return bool(await endpoint.redis.llen(gate.started) >= 1)

        await until(started, "the Parsl worker to start the task")
        (worker_pid,) = await gate.wait_started()
        await publish_cancel(endpoint, doomed)
        await asyncio.wait_for(running, timeout=30)
        await assert_cancelled(endpoint, doomed)
        assert alive(int(worker_pid))  # Parsl's worker still runs the cancelled call

        after = await endpoint.submit(square, 7)
        again = asyncio.create_task(agent.run(burst=True))
        await gate.release()  # the cancelled call ends, and frees its slot
        await asyncio.wait_for(again, timeout=30)

    assert await endpoint.result(after) == 49
    await assert_cancelled(endpoint, doomed)  # the dropped outcome changed nothing
    await endpoint.assert_settled()


async def test_a_stop_hands_back_what_waits_and_lets_the_calls_in_parsl_finish(
    endpoint: GatewayEndpoint, site: Path, redis_url: str
) -> None:
    hold = await endpoint.register(HOLD)
    gate = Gate(endpoint)
    task_ids = await endpoint.submit_many(hold, [(gate.args(redis_url), {}) for _ in range(5)])
    settings = parsl_settings(endpoint, site, drain_grace_s=30)

    async with Agent(settings) as agent:
        running = asyncio.create_task(agent.run())

        async def both_started() -> bool:
            return bool(await endpoint.redis.llen(gate.started) >= PARSL_WORKERS)

        await until(both_started, "both Parsl workers to start a task")
        await gate.wait_started(PARSL_WORKERS)
        agent.stop()
        # The calls in Parsl get the grace, and finish within it; the rest go back.
        await gate.release(PARSL_WORKERS)
        await asyncio.wait_for(running, timeout=30)

    states = [(await endpoint.task(t))["state"] for t in task_ids]
    assert sorted(states) == sorted([TaskState.SUCCESS] * 2 + [TaskState.WAITING] * 3)
    for task_id, state in zip(task_ids, states, strict=True):
        if state == TaskState.SUCCESS:
            assert await endpoint.result(task_id) is True
    assert await endpoint.redis.xlen(endpoint.stream) == 3
    assert await endpoint.pending() == 0


async def test_calls_fail_with_worker_lost_when_parsl_does_not_start(
    site: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("Parsl cannot make its run directory under a file\n")
    engine = ParslEngine(1, config_path=str(site), run_dir=str(blocker / "runinfo"))
    try:
        outcome = await run_one(engine, Call("fn-1", SQUARE, pack_payload((3,))))
    finally:
        await engine.aclose()
    assert outcome.exception is not None
    assert outcome.exception["type"] == "WorkerLost"
    assert "the Parsl executor did not start" in outcome.exception["message"]
    assert logging.getLogger("parsl").propagate  # restored by aclose


@pytest.mark.parametrize("example", ["local", "slurm", "pbs"])
def test_the_documented_configs_build_a_parsl_config(example: str, tmp_path: Path) -> None:
    provider_type = {"local": LocalProvider, "slurm": SlurmProvider, "pbs": PBSProProvider}
    config = load_config(PARSL_EXAMPLES / f"{example}.py", run_dir=tmp_path / "runinfo")
    (executor,) = config.executors
    assert isinstance(executor, HighThroughputExecutor)
    assert executor.label == LABEL
    assert type(executor.provider) is provider_type[example]
    assert config.run_dir == str(tmp_path / "runinfo")
    assert not (tmp_path / "runinfo").exists()  # built, not started


def test_the_documented_kubernetes_config_builds_where_kubernetes_is_installed(
    tmp_path: Path,
) -> None:
    """Parsl's KubernetesProvider needs the ``kubernetes`` package on the agent's node; with
    it the example builds, without it loading the example says what is missing."""
    path = PARSL_EXAMPLES / "kubernetes.py"
    if importlib.util.find_spec("kubernetes") is None:
        with pytest.raises(SettingsError, match=r"OptionalModuleMissing.*kubernetes"):
            load_config(path, run_dir=tmp_path)
        return
    from parsl.providers import KubernetesProvider

    (executor,) = load_config(path, run_dir=tmp_path).executors
    assert isinstance(executor, HighThroughputExecutor)
    assert isinstance(executor.provider, KubernetesProvider)


def test_a_config_without_a_provider_is_a_configuration_mistake(tmp_path: Path) -> None:
    path = tmp_path / "config.py"
    with pytest.raises(SettingsError, match="does not load: FileNotFoundError"):
        load_config(path, run_dir=tmp_path)
    path.write_text("executor = {'max_workers_per_node': 2}\n")
    with pytest.raises(SettingsError, match="must define `provider`"):
        load_config(path, run_dir=tmp_path)
    path.write_text(
        "from parsl.providers import LocalProvider\nprovider = LocalProvider()\n"
        "executor = {'label': 'mine'}\n"
    )
    with pytest.raises(SettingsError, match=r"must not set \['label'\]"):
        load_config(path, run_dir=tmp_path)
    path.write_text(
        "from parsl.providers import LocalProvider\nprovider = LocalProvider()\n"
        "executor = {'no_such_option': 1}\n"
    )
    with pytest.raises(SettingsError, match="no_such_option"):
        load_config(path, run_dir=tmp_path)
    path.write_text(
        "from parsl.providers import LocalProvider\nprovider = LocalProvider()\n"
        "config = {'run_dir': 'elsewhere'}\n"
    )
    with pytest.raises(SettingsError, match=r"`config` must not set \['run_dir'\]"):
        load_config(path, run_dir=tmp_path)


def test_the_parsl_engine_needs_its_config() -> None:
    with pytest.raises(SettingsError, match="engine 'parsl' needs parsl_config"):
        AgentSettings(
            endpoint_id="ep-1", ws_url="ws://127.0.0.1:1", credential="fxep_x", engine="parsl"
        )


def test_without_parsl_installed_the_engine_is_a_configuration_mistake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in sys.modules if n == "parsl" or n.startswith("parsl.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what an agent without parsl finds
    monkeypatch.delitem(sys.modules, "endpoint_agent.parsl_engine", raising=False)
    settings = AgentSettings(
        endpoint_id="ep-1",
        ws_url="ws://127.0.0.1:1",
        credential="fxep_x",
        engine="parsl",
        parsl_config=str(tmp_path / "config.py"),
    )
    with pytest.raises(SettingsError, match=r"engine 'parsl' needs the parsl package.*\[parsl\]"):
        make_engine(settings)
