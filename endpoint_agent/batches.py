"""The pipe between the process engine and one worker process, and the worker's side of it.

Messages, agent to worker (each one pickle on the pipe):

* ``(BATCH, [Job, ...])``: calls to run, in order (a :data:`Job` is a tuple).
  ``code`` travels once per function per worker process: the agent remembers which ids a
  worker holds (:class:`CodeBook`, the same bounded first-in-first-out rule on both sides,
  so both always agree) and sends ``None`` for those.
* ``(SKIP, fence, [seq, ...])``: calls sent earlier that must not start (cancelled, handed
  back, or moved to an idle worker); ``fence`` (0: none) lifts the fence that moved them.
* ``None``: exit.

Worker to agent: ``READY`` once, then lists of ``(seq, outcome, elapsed_s)``, outcomes
coalesced: the worker flushes what it has when its queue runs dry, after
``FLUSH_COUNT`` outcomes, and before starting a call once the oldest has waited
``FLUSH_AGE_S`` or when the call's function has not yet been seen to run in under
``FLUSH_AGE_S``. So outcomes wait behind a long call only when its function looked quick;
if such a call is then killed (a walltime, a cancel), the outcomes it held back are lost
with its worker and those calls run again.

Before each call the worker reads whatever arrived (``poll(0)``, no blocking), so a skip
sent before the call starts is honoured. It then records the call's ``seq`` and start time
in shared memory (:class:`Progress`): the agent reads it to know which call is running, for
a walltime, a cancel, or a death (``os._exit``, a segfault) that must fail only the call
that caused it.

**Fences.** A worker stuck in a long call cannot read its pipe, so the agent takes back the
calls queued behind it with a fence instead: under the :class:`Progress` lock it reads the
running ``seq`` and forbids any later one to start; the worker, under the same lock, starts
a call only if it is not past the fence. So each queued call either started before the
fence (and the agent leaves it) or never will on this worker, and the agent queues it again
at once, for any worker.
The ``SKIP`` that follows names those calls and lifts the fence; messages keep their order,
so a batch sent after it is never held back by it. A stop of a call the worker has not
started uses the same fence, so it is exact too.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from typing import Any

from endpoint_agent import capture
from endpoint_agent.worker import CACHE_SIZE, Call, Limits, Outcome, describe, run_call

READY = "ready"
BATCH = "batch"
SKIP = "skip"

FLUSH_COUNT = 64
"""Most outcomes one message carries."""
FLUSH_AGE_S = 0.002
"""Longest an outcome waits in the worker for others to share its message (but see the
module docstring: it may wait behind a call that looked quick and was not)."""

Job = tuple[int, str, str | None, str, frozenset[str] | None, Limits]
"""``(seq, function_id, code or None, payload, allowed strategies, limits)``; the last two
are the same objects in every job of a batch, so pickle sends them once."""
Result = tuple[int, Outcome, float]
"""``(seq, outcome, elapsed_s)``."""


NO_FENCE = 2**62
LOCK_TIMEOUT_S = 0.1
"""Longest the agent waits for a worker's :class:`Progress` lock (a worker killed while it
held it never gives it back: the agent then moves nothing)."""


class Progress:
    """Which call a worker started last and when (``time.monotonic``), and the fence that
    the agent may set (see the module docstring), in shared memory.

    The worker writes the time, then the ``seq``; a reader that sees a ``seq`` sees its time
    (or a later one, which only makes a walltime fire later, never early)."""

    def __init__(self, context: SpawnContext) -> None:
        self._lock = context.Lock()
        self._seq = context.RawValue("q", 0)
        self._at = context.RawValue("d", 0.0)
        self._limit = context.RawValue("q", NO_FENCE)
        self._fence = context.RawValue("q", 0)

    def begin(self, seq: int) -> bool:
        """The worker is about to start ``seq``: record it, unless a fence forbids it."""
        with self._lock:
            if seq > self._limit.value:
                return False
            self._at.value = time.monotonic()
            self._seq.value = seq
            return True

    def fence(self, fence: int) -> int | None:
        """Forbid every call after the running one to start; returns the running ``seq``
        (``None``: the lock could not be had, nothing is fenced)."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            return None
        try:
            self._limit.value = self._seq.value
            self._fence.value = fence
            return int(self._seq.value)
        finally:
            self._lock.release()

    def lift(self, fence: int) -> None:
        """The worker read the skip of ``fence``: calls may start again."""
        with self._lock:
            if self._fence.value == fence:
                self._limit.value = NO_FENCE

    @property
    def seq(self) -> int:
        """The last call started (0: none yet)."""
        return int(self._seq.value)

    @property
    def started_at(self) -> float:
        return float(self._at.value)


class CodeBook:
    """Which function ids a worker holds the code of: the last ``size`` added, oldest
    forgotten first. The agent and the worker each keep one and feed it the same ids in
    the same order, so they agree without asking."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._codes: dict[str, str | None] = {}

    def __contains__(self, function_id: str) -> bool:
        return function_id in self._codes

    def add(self, function_id: str, code: str | None = None) -> None:
        if function_id in self._codes:
            return
        if len(self._codes) >= self.size:
            del self._codes[next(iter(self._codes))]
        self._codes[function_id] = code

    def code(self, function_id: str) -> str | None:
        return self._codes.get(function_id)


class _Outbox:
    """The worker's outcomes not yet sent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.results: list[Result] = []
        self.since = 0.0

    def add(self, result: Result) -> None:
        if not self.results:
            self.since = time.monotonic()
        self.results.append(result)
        if len(self.results) >= FLUSH_COUNT:
            self.flush()

    def due(self) -> bool:
        return bool(self.results) and time.monotonic() - self.since >= FLUSH_AGE_S

    def flush(self) -> None:
        if self.results:
            results, self.results = self.results, []
            self.conn.send(results)


def worker_main(conn: Connection, progress: Progress, accelerator: str | None) -> None:
    """A worker process: run the batches that arrive on ``conn`` until it closes."""
    if accelerator is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = accelerator
    os.setpgrp()  # a group of its own: a walltime or cancel kills what its call started too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    capture.install()
    try:
        conn.send(READY)
        _serve(conn, progress)
    except (EOFError, OSError):  # the agent is gone
        return


def _serve(conn: Connection, progress: Progress) -> None:
    book = CodeBook()
    queue: deque[Job] = deque()
    skipped: set[int] = set()
    quick: dict[str, float] = {}  # function id -> EWMA of its calls' seconds
    outbox = _Outbox(conn)

    def take(message: Any) -> bool:
        if message is None:
            return False
        kind, body = message
        if kind == BATCH:
            for seq, function_id, code, payload, allowed, limits in body:
                if code is not None:
                    book.add(function_id, code)
                else:  # looked up now: a later batch may evict it before the call runs
                    code = book.code(function_id)
                queue.append((seq, function_id, code, payload, allowed, limits))
        elif kind == SKIP:
            fence, seqs = body
            skipped.update(seqs)
            if fence:
                progress.lift(fence)
        return True

    while True:
        if not queue:
            outbox.flush()
            skipped.clear()  # every skip names a call sent earlier: all are behind us
            if not take(conn.recv()):
                return
            continue
        while conn.poll(0):
            if not take(conn.recv()):
                return
        seq, function_id, code, payload, allowed, limits = queue.popleft()
        if seq in skipped:
            skipped.discard(seq)
            continue
        if outbox.due() or quick.get(function_id, math.inf) >= FLUSH_AGE_S:
            outbox.flush()
        if not progress.begin(seq):
            continue  # fenced: the agent moved it to another worker
        started = time.perf_counter()
        outcome = _run(function_id, code, payload, allowed, limits)
        elapsed = time.perf_counter() - started
        before = quick.get(function_id)
        quick[function_id] = elapsed if before is None else 0.8 * before + 0.2 * elapsed
        if len(quick) > CACHE_SIZE:
            del quick[next(iter(quick))]
        outbox.add((seq, outcome, elapsed))


def _run(
    function_id: str,
    code: str | None,
    payload: str,
    allowed: frozenset[str] | None,
    limits: Limits,
) -> Outcome:
    if code is None:  # the agent and this worker disagree on the code book: a bug
        error = RuntimeError(f"the worker holds no code for function {function_id}")
        return Outcome.failure(describe(error))
    return run_call(Call(function_id, code, payload, allowed, limits))


def batch(jobs: Sequence[Job]) -> tuple[str, list[Job]]:
    return BATCH, list(jobs)


def skip(seqs: Sequence[int], fence: int = 0) -> tuple[str, tuple[int, list[int]]]:
    return SKIP, (fence, list(seqs))
