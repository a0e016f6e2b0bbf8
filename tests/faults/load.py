"""The two client styles the fault tests drive, each in a thread, and what they count.

- :class:`ExecutorLoad`: ``Executor.submit`` of ``record_square`` for x in 0..n-1, at most
  ``window`` futures outstanding, so submissions go on while results come back and a fault
  lands in the middle of both.
- :class:`PollingLoad`: ``Client.batch_run`` in batches of ``batch`` tasks, at most
  ``window`` outstanding, and ``get_batch_result`` polling for the rest (funcX's
  fire-and-forget style).

Neither retries anything itself: what the SDK raises is counted as raised, so a test can state
that a client sees at most a delay. Both stop at their deadline, whatever is left then is
counted as lost; a load never waits past it.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fxbroker import Client, Executor, TaskFailed
from sdk.keys import Keys
from sdk.messages import hash_field
from tests.faults.platform import Platform
from tests.faults.work import count_runs, record_square
from tests.redis_urls import sync_redis

POLL_S = 0.2
"""The polling style's pause between two ``get_batch_result`` calls."""
ERRORS_KEPT = 5


@dataclass
class StyleFigures:
    """What one client style saw in one run. Every task submitted ends in exactly one of
    ``right``, ``failed``, ``raised`` or ``lost``."""

    style: str
    submitted: int = 0
    """Tasks handed to the SDK (``submit`` / ``batch_run``)."""
    unsent: int = 0
    """Tasks the load never got to hand over: results stopped coming, so its window of
    outstanding tasks stayed full until the deadline."""
    right: int = 0
    """Completed, with the right value."""
    failed: int = 0
    """Completed as a failed task, or with a wrong value."""
    raised: int = 0
    """Never got a task id, or their future got an error that is not the task's own."""
    lost: int = 0
    """Still not completed at the deadline."""
    duplicated: int = 0
    """Tasks created twice: task ids seen twice, or more tasks in the task group than were
    submitted (a batch retried into new tasks)."""
    reruns: int = 0
    """Extra runs: a task's function ran more than once."""
    lapsed: int = 0
    """Tasks whose lease lapsed (started more than once: ``attempts`` above 1)."""
    unexplained_reruns: int = 0
    """Tasks that ran more often than they were started (``attempts``)."""
    client_errors: int = 0
    """SDK calls that raised to the caller (submits and polls; each counted once)."""
    recovery_s: float | None = None
    """From the restart of the faulted piece until this style's next result."""
    errors: list[str] = field(default_factory=list)
    """The first few distinct errors the client saw."""

    def note(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:300]
        if text not in self.errors and len(self.errors) < ERRORS_KEPT:
            self.errors.append(text)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Load:
    """A client style in a thread: :meth:`start`, :meth:`join`, then :attr:`figures`."""

    tag = ""

    def __init__(
        self,
        platform: Platform,
        *,
        runs: str,
        n: int,
        window: int,
        deadline: float,
        hold_s: float = 0.0,
    ) -> None:
        self.platform = platform
        self.runs = runs
        self.hold_s = hold_s  # each task's run takes this long (record_square's hold_s)
        self.n = n
        self.window = window
        self.deadline = deadline
        self.figures = StyleFigures(self.name)
        self.task_group_id: str | None = None
        self.task_of: dict[int, str] = {}
        """x -> task id, for every task that got one."""
        self.handed = 0
        """Tasks handed to the SDK so far (read while the load runs)."""
        self._done_at: list[float] = []
        self._done_lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"fault-{self.tag}", daemon=True)
        self._crash: BaseException | None = None

    @property
    def name(self) -> str:
        raise NotImplementedError

    def completed(self) -> int:
        with self._done_lock:
            return len(self._done_at)

    def _completed_now(self) -> None:
        with self._done_lock:
            self._done_at.append(time.monotonic())

    def first_result_after(self, when: float) -> float | None:
        """Seconds from ``when`` to the first result seen after it (``None``: none came)."""
        with self._done_lock:
            times = sorted(self._done_at)
        i = bisect.bisect_right(times, when)
        return times[i] - when if i < len(times) else None

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(max(0.0, self.deadline - time.monotonic()) + 30)
        if self._thread.is_alive():
            raise RuntimeError(f"the {self.name} load did not stop at its deadline")
        if self._crash is not None:
            raise RuntimeError(f"the {self.name} load crashed") from self._crash

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by join()
            self._crash = exc

    def _run(self) -> None:
        raise NotImplementedError

    def left_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


class ExecutorLoad(_Load):
    tag = "e"

    @property
    def name(self) -> str:
        return "Executor"

    def _run(self) -> None:
        p = self.platform
        client = Client(p.url, p.token, ws_url=p.ws_url)
        ex = Executor(p.endpoint_id, client=client)
        futures: list[concurrent.futures.Future[int]] = []
        room = threading.Semaphore(self.window)

        def done(future: concurrent.futures.Future[int]) -> None:
            if not future.cancelled():  # cancelled by the shutdown at the deadline
                self._completed_now()
            room.release()

        try:
            for x in range(self.n):
                if not room.acquire(timeout=self.left_s()):
                    break
                try:
                    future = ex.submit(record_square, self.tag, x, self.runs, self.hold_s)
                except Exception as exc:  # the Executor refused it: counted, not retried
                    self.figures.client_errors += 1
                    self.figures.note(exc)
                    room.release()
                    continue
                future.add_done_callback(done)
                futures.append(future)
                self.handed = len(futures)
            self.figures.submitted = len(futures)
            self.figures.unsent = self.n - len(futures)
            concurrent.futures.wait(futures, timeout=self.left_s())
            self.task_group_id = ex.task_group_id
            self._settle(futures)
        finally:
            # Bounded whatever the SDK does: a shutdown that hangs is left to its thread.
            closer = threading.Thread(
                target=_close_executor, args=(ex, client), name="fault-close", daemon=True
            )
            closer.start()
            closer.join(max(1.0, self.left_s()))

    def _settle(self, futures: Sequence[concurrent.futures.Future[int]]) -> None:
        f = self.figures
        for x, future in enumerate(futures):
            task_id = getattr(future, "task_id", None)
            if task_id:
                self.task_of[x] = task_id
            if not future.done():
                f.lost += 1
                continue
            if future.cancelled():
                f.raised += 1
                continue
            error = future.exception()
            if error is None:
                if future.result() == x * x:
                    f.right += 1
                else:
                    f.failed += 1
            elif isinstance(error, TaskFailed):
                f.failed += 1
                f.note(error)
            else:
                f.raised += 1
                f.note(error)


def _close_executor(ex: Executor, client: Client) -> None:
    ex.shutdown(wait=True, cancel_futures=True)
    client.close()


class PollingLoad(_Load):
    tag = "b"
    batch = 100

    @property
    def name(self) -> str:
        return "batch_run+poll"

    def _run(self) -> None:
        p = self.platform
        f = self.figures
        pending: dict[str, int] = {}
        with Client(p.url, p.token, ws_url=p.ws_url) as client:
            function_id = client.register_function(record_square)
            x = 0
            while (x < self.n or pending) and time.monotonic() < self.deadline:
                room = min(self.batch, self.n - x, self.window - len(pending))
                if room > 0:
                    batch = client.create_batch()
                    for i in range(x, x + room):
                        batch.add(function_id, args=(self.tag, i, self.runs, self.hold_s))
                    f.submitted += room
                    self.handed = f.submitted
                    try:
                        ids = client.batch_run(p.endpoint_id, batch)
                    except Exception as exc:  # counted, not retried: the SDK retries or not
                        f.client_errors += 1
                        f.raised += room
                        f.note(exc)
                    else:
                        for i, task_id in enumerate(ids, start=x):
                            if task_id in pending or task_id in self.task_of.values():
                                f.duplicated += 1
                            pending[task_id] = i
                            self.task_of[i] = task_id
                    x += room
                if pending:
                    self._poll(client, pending)
                time.sleep(POLL_S)
            self.task_group_id = client.task_group_id
        f.lost += len(pending)
        f.unsent = self.n - f.submitted

    def _poll(self, client: Client, pending: dict[str, int]) -> None:
        f = self.figures
        try:
            results = client.get_batch_result(list(pending))
        except Exception as exc:  # counted, not retried: polling goes on at the next turn
            f.client_errors += 1
            f.note(exc)
            return
        for task_id, status in results.items():
            if status["pending"] or task_id not in pending:
                continue
            x = pending.pop(task_id)
            self._completed_now()
            if "exception" not in status and status.get("result") == x * x:
                f.right += 1
            else:
                f.failed += 1
                if "exception" in status:
                    f.note(status["exception"])


def count_duplicates_and_reruns(
    platform: Platform,
    figures: StyleFigures,
    *,
    task_group_id: str | None,
    task_of: Mapping[int, str],
    runs: str,
    tag: str,
    redis_url: str,
) -> None:
    """Fill in ``duplicated`` (tasks in the group beyond those submitted), ``reruns``,
    ``lapsed`` and ``unexplained_reruns`` (from the runs file and each task's ``attempts``
    in Redis). ``task_of`` maps x to its task id; ``tag`` is the style's tag in ``runs``."""
    f = figures
    if task_group_id is not None:
        with Client(platform.url, platform.token) as client:
            total = int(client.get_task_group(task_group_id, limit=1)["total"])
        f.duplicated += max(0, total - f.submitted)
    counts = count_runs(runs)
    ran = {x: c for (t, x), c in counts.items() if t == tag}
    f.reruns = sum(c - 1 for c in ran.values() if c > 1)
    keys = Keys(platform.prefix)
    xs = sorted(task_of)
    store = sync_redis(redis_url, decode_responses=True)
    try:
        pipe = store.pipeline(transaction=False)
        for x in xs:
            pipe.hget(keys.task(task_of[x]), hash_field("attempts"))
        attempts = [int(a or 0) for a in pipe.execute()]
    finally:
        store.close()
    f.lapsed = sum(1 for a in attempts if a > 1)
    f.unexplained_reruns = sum(
        1 for x, a in zip(xs, attempts, strict=True) if ran.get(x, 0) > max(a, 1)
    )
