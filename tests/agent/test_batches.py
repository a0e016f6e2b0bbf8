"""The process engine's batches, in-process against real worker processes: code once per
function per worker, few pipe messages for many calls, and the calls a worker holds
beyond the running one surviving a skip, a walltime and a worker's death."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.engines import run_one
from endpoint_agent.processes import ProcessEngine
from endpoint_agent.worker import CACHE_SIZE, Call, Outcome
from sdk.serialize import deserialize, pack_payload
from sdk.states import TaskState
from tests.agent.helpers import source_code

PID = source_code("pid", "import os\n\ndef pid(*_):\n    return os.getpid()\n")
OTHER = source_code("other", "def other(x):\n    return -x\n")
PAIR = source_code("pair", "import os\n\ndef pair(x):\n    return os.getpid(), x\n")
TOUCH = source_code(
    "touch",
    """
    import os

    def touch(path):
        with open(path, "w") as f:
            f.write("ran")
        return os.getpid()
    """,
)
NOTE = source_code(
    "note",
    """
    import os

    def note(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\\n")
    """,
)
BLOCK = source_code(
    "block",
    """
    import os

    def block(started, release):
        with open(started, "w") as f:  # a FIFO: the test reads it
            f.write("started")
        with open(release) as f:  # a FIFO: blocks until the test writes it
            f.read()
        return os.getpid()
    """,
)
MISBEHAVE = source_code(
    "misbehave",
    """
    import ctypes
    import os
    import time

    def misbehave(how):
        if how == "exit":
            os._exit(3)
        if how == "segfault":
            ctypes.string_at(0)
        time.sleep(60)
    """,
)


class Calls:
    """Submits calls to an engine and collects what ``done`` reports, by key."""

    def __init__(self, engine: ProcessEngine) -> None:
        self.engine = engine
        self.outcomes: dict[str, Outcome] = {}
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}

    def submit(
        self, key: str, code: str, *args: object, walltime_s: float | None = None
    ) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        call = Call(f"fn-{hash(code)}", code, pack_payload(args, {}))
        self.engine.submit(key, call, walltime_s=walltime_s, done=self._done)
        return future

    def _done(self, key: str, outcome: Outcome) -> None:
        assert key not in self.outcomes, f"{key} reported twice"
        self.outcomes[key] = outcome
        self._waiters[key].set_result(outcome)

    async def warm(self, count: int = 20) -> int:
        """Run quick calls until the engine holds deep batches; returns a worker's pid."""
        pids = [await asyncio.wait_for(self.submit(f"warm-{i}", PID), 30) for i in range(count)]
        assert self.engine.depth >= 8  # room for every call a test queues behind another
        return int(result(pids[-1]))


def result(outcome: Outcome) -> Any:
    assert outcome.state == TaskState.SUCCESS, outcome
    assert outcome.result is not None
    return deserialize(outcome.result)


@pytest.fixture
async def engine() -> AsyncIterator[ProcessEngine]:
    engine = ProcessEngine(1)
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture
def fifos(tmp_path: Path) -> tuple[str, str]:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    return str(started), str(release)


async def test_code_reaches_each_worker_once_per_function() -> None:
    engine = ProcessEngine(2)
    try:
        calls = Calls(engine)
        futures = [calls.submit(f"p{i}", PID, i) for i in range(100)]
        futures += [calls.submit(f"o{i}", PAIR, i) for i in range(100)]
        done = await asyncio.wait_for(asyncio.gather(*futures), 60)
    finally:
        await engine.aclose()
    ran_on = [result(o) for o in done]
    assert [r[1] for r in ran_on[100:]] == list(range(100))
    # One code send per (function, worker) that ran it, not one per call.
    pairs = {(i < 100, r if i < 100 else r[0]) for i, r in enumerate(ran_on)}
    assert engine.stats.calls == 200 and engine.stats.codes == len(pairs)


async def test_200_no_ops_take_far_fewer_pipe_messages_than_calls() -> None:
    engine = ProcessEngine(2)
    try:
        calls = Calls(engine)
        futures = [calls.submit(f"k{i}", PID) for i in range(200)]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
    finally:
        await engine.aclose()
    stats = engine.stats
    assert (stats.calls, stats.outcomes) == (200, 200)
    assert stats.batches + stats.results <= 40, stats  # 400 with one message per call


async def test_a_call_skipped_before_it_starts_never_runs(
    engine: ProcessEngine, fifos: tuple[str, str], tmp_path: Path
) -> None:
    started, release = fifos
    calls = Calls(engine)
    first_pid = await calls.warm()
    marker = tmp_path / "skipped-ran"
    sent = engine.stats.batches
    blocked = calls.submit("blocked", BLOCK, started, release)
    calls.submit("skipped", TOUCH, str(marker))
    after = calls.submit("after", PID)
    await asyncio.to_thread(Path(started).read_text)  # the worker runs "blocked" now
    assert engine.stats.batches == sent + 1  # all three went in one message
    assert engine.started("blocked") and not engine.started("skipped")

    engine.stop("skipped")
    await asyncio.to_thread(Path(release).write_text, "go")

    assert result(await asyncio.wait_for(after, 30)) == first_pid  # the same worker
    assert result(await blocked) == first_pid
    assert "skipped" not in calls.outcomes
    assert not marker.exists()


async def test_a_walltime_kills_only_the_running_call_and_the_queued_ones_run_after(
    engine: ProcessEngine,
) -> None:
    calls = Calls(engine)
    first_pid = await calls.warm()
    slow = calls.submit("slow", MISBEHAVE, "sleep", walltime_s=0.5)
    behind = [calls.submit(f"behind-{i}", PID) for i in range(5)]

    outcome = await asyncio.wait_for(slow, 30)
    assert outcome.state == TaskState.FAILED and outcome.exception is not None
    assert outcome.exception["type"] == "WalltimeExceeded"
    pids = {result(o) for o in await asyncio.wait_for(asyncio.gather(*behind), 60)}
    assert len(pids) == 1 and first_pid not in pids  # on the replacement worker


@pytest.mark.parametrize(
    ("how", "words"), [("exit", "exited with code 3"), ("segfault", "SIGSEGV")]
)
async def test_a_dying_worker_fails_only_its_call(
    engine: ProcessEngine, how: str, words: str
) -> None:
    calls = Calls(engine)
    first_pid = await calls.warm()
    before = calls.submit("before", PID)
    dies = calls.submit("dies", MISBEHAVE, how)
    behind = [calls.submit(f"behind-{i}", OTHER, i) for i in range(5)]

    outcome = await asyncio.wait_for(dies, 30)
    assert outcome.state == TaskState.FAILED and outcome.exception is not None
    assert outcome.exception["type"] == "WorkerLost"
    assert words in outcome.exception["message"]
    assert result(await asyncio.wait_for(before, 30)) == first_pid
    assert [result(o) for o in await asyncio.wait_for(asyncio.gather(*behind), 60)] == [
        -i for i in range(5)
    ]
    assert result(await run_one(engine, Call("pid", PID, pack_payload((), {})))) != first_pid


async def test_a_call_queued_before_its_code_is_evicted_still_runs(engine: ProcessEngine) -> None:
    """The worker keeps the code of the last CACHE_SIZE functions; a call that arrived
    while its function was held runs even if a later call in its batch evicts it."""
    payload = pack_payload((), {})
    calls = [Call(f"fn-{i}", PID, payload) for i in range(CACHE_SIZE + 1)]
    for call in calls[:CACHE_SIZE]:  # the worker holds every one of these now
        assert isinstance(result(await asyncio.wait_for(run_one(engine, call), 30)), int)
    codes, batches = engine.stats.codes, engine.stats.batches
    first = asyncio.ensure_future(run_one(engine, calls[0]))  # known: sent without code
    newest = asyncio.ensure_future(run_one(engine, calls[-1]))  # evicts fn-0 on arrival
    done = await asyncio.wait_for(asyncio.gather(first, newest), 30)
    assert [type(result(o)) for o in done] == [int, int]
    assert (engine.stats.codes, engine.stats.batches) == (codes + 1, batches + 1)


async def test_calls_queued_behind_a_long_call_move_to_a_worker_that_ran_dry(
    fifos: tuple[str, str], tmp_path: Path
) -> None:
    started, release = fifos
    engine = ProcessEngine(2)
    try:
        calls = Calls(engine)
        await calls.warm()
        blocked = calls.submit("blocked", BLOCK, started, release)
        notes = [tmp_path / f"note-{i}" for i in range(10)]
        quick = [calls.submit(f"quick-{i}", NOTE, str(note)) for i, note in enumerate(notes)]
        await asyncio.to_thread(Path(started).read_text)
        # Half of them were queued behind "blocked": they finish while it still blocks.
        await asyncio.wait_for(asyncio.gather(*quick), 30)
        assert engine.stats.moved >= 1 and not blocked.done()
        await asyncio.to_thread(Path(release).write_text, "go")
        blocked_pid = result(await asyncio.wait_for(blocked, 30))
    finally:
        await engine.aclose()
    for note in notes:  # each ran once, and not on the blocked worker
        lines = note.read_text().splitlines()
        assert len(lines) == 1 and lines[0] != str(blocked_pid)
