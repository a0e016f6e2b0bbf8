"""The parsl engine: ``def`` calls run on a Parsl ``HighThroughputExecutor`` (HTE).

A site that reaches its nodes through Parsl (a Slurm or PBS allocation, a Kubernetes
cluster, or the local machine) lets one agent hand them its endpoint's ``def`` tasks:
``engine = "parsl"`` with ``parsl_config``, the path of a Python file that defines

* ``provider``: a Parsl execution provider (``LocalProvider``, ``SlurmProvider``,
  ``PBSProProvider``, ``KubernetesProvider``, ...), with its launcher, blocks and
  ``worker_init``; and, optionally,
* ``executor``: a dict of keyword options of the ``HighThroughputExecutor`` (``address``
  the workers reach the agent's node at, ``max_workers_per_node``, ``cores_per_worker``,
  the port ranges, ``heartbeat_period``, ...); never ``label`` or ``provider``; and,
  optionally,
* ``config``: a dict of keyword options of Parsl's ``Config`` (``strategy``,
  ``strategy_period``, ``max_idletime``, ...); never ``executors`` or ``run_dir``.

:func:`load_config` turns it into a Parsl ``Config`` (one HTE, run directory
``parsl_run_dir``; Parsl's ``simple`` scaling strategy unless ``config`` says otherwise)
without starting anything; the
engine starts it in a thread when it is made, so the agent's loop does not wait for the
interchange. Examples for Slurm, PBS Pro and Kubernetes are in ``docs/parsl/``. Each call is
one Parsl app call of :func:`endpoint_agent.parsl_job.run`, which the workers must be able
to import (fxbroker installed beside them, or on their ``PYTHONPATH``).

**In flight.** At most ``workers`` calls are in Parsl at once (queued in its interchange or
running); the rest wait in the engine (the look-ahead is ``workers``), and backpressure holds
as with the other engines. Size ``workers`` to the Parsl workers the provider's blocks give
(nodes x workers per node).

**Logs.** Parsl writes its own log (DEBUG) to ``parsl.log`` in its numbered run directory
under ``parsl_run_dir``, the interchange's and the workers' beside it; while the engine runs,
Parsl's lines do not reach the agent's log.

**Started.** The HTE reports no start of a task, and nothing handed to it can be taken back,
so a call counts as started once it is handed to Parsl: a drain gives it the grace.

**Walltime.** Enforced in the worker by :func:`endpoint_agent.parsl_job.run` (``SIGALRM``;
see there) and reported with ``WalltimeExceeded``.

**Stopping a call** (:meth:`ParslEngine.stop`: a cancel, a drain, a lost lease). A call not
handed to Parsl yet is dropped. One handed to Parsl cannot be stopped: the HTE has no way to
withdraw a task from its interchange nor to kill a running one (its futures do not cancel).
Such a call runs to its end, its outcome is dropped, and it keeps its slot until then, so that
in-flight work stays bounded; its walltime, if any, still ends it. When the agent stops,
:meth:`ParslEngine.aclose` cleans Parsl up: the blocks are cancelled through the provider
(which kills the workers, and with them whatever they still run) and the interchange ends.

A worker process that dies (``os._exit``, a signal, out of memory) or a node that is lost
fails its call with ``WorkerLost``, from Parsl's own report: its worker pool sees a dead
worker within the HTE's ``heartbeat_period`` (30 s unless ``executor`` sets it), a lost
node within its ``heartbeat_threshold``. Execution is at-least-once, as
everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import runpy
import sys
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.providers.base import ExecutionProvider

from endpoint_agent import parsl_job
from endpoint_agent.processes import Done
from endpoint_agent.worker import WORKER_LOST, Call, Outcome, walltime_exceeded
from sdk.messages import error_record
from service_common.errors import SettingsError

log = logging.getLogger(__name__)

_PARSL_LOG = logging.getLogger("parsl")
LABEL = "fxbroker"
"""The label of the engine's HTE (and of its log directory in the run directory)."""


def load_config(path: str | Path, *, run_dir: str | Path) -> Config:
    """The Parsl ``Config`` of the Python file at ``path`` (see the module docstring):
    one HTE of its ``provider`` and ``executor`` options; nothing is started."""
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # a missing file or module, a mistake in it, Parsl's refusal
        raise SettingsError(
            f"parsl_config {str(path)!r} does not load: {type(exc).__name__}: {exc}"
        ) from exc
    provider = namespace.get("provider")
    if not isinstance(provider, ExecutionProvider):
        raise SettingsError(
            f"parsl_config {str(path)!r} must define `provider`, a Parsl execution provider "
            f"(such as LocalProvider or SlurmProvider), not {type(provider).__name__}"
        )
    settings = _options(path, namespace, "config", "Config", forbidden={"executors", "run_dir"})
    options = _options(
        path, namespace, "executor", "HighThroughputExecutor", forbidden={"label", "provider"}
    )
    try:
        executor = HighThroughputExecutor(label=LABEL, provider=provider, **options)
    except TypeError as exc:
        raise SettingsError(f"parsl_config {str(path)!r}: `executor`: {exc}") from exc
    try:
        return Config(
            **{"strategy": "simple", "retries": 0, **settings},
            executors=[executor],
            run_dir=str(run_dir),
        )
    except TypeError as exc:
        raise SettingsError(f"parsl_config {str(path)!r}: `config`: {exc}") from exc


def _options(
    path: str | Path, namespace: dict[str, Any], name: str, what: str, *, forbidden: set[str]
) -> dict[str, Any]:
    """The dict of keyword options ``name`` of the config file (empty when it has none)."""
    options = namespace.get(name, {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise SettingsError(
            f"parsl_config {str(path)!r}: `{name}` must be a dict of {what} options"
        )
    taken = sorted(forbidden & set(options))
    if taken:
        raise SettingsError(f"parsl_config {str(path)!r}: `{name}` must not set {taken}")
    return options


@dataclass(slots=True, eq=False)
class _ParslCall:
    """One submitted call: waiting in the engine, or handed to Parsl (``handed``)."""

    key: str
    call: Call
    walltime_s: float | None
    done: Done
    handed: bool = False
    stopped: bool = False  # taken back by the agent: never reported


class ParslEngine:
    """Calls run on a Parsl HTE built from the file ``config_path`` (run directory
    ``run_dir``), at most ``workers`` in Parsl at once. Create it inside a running event
    loop."""

    name = "parsl"

    def __init__(self, workers: int, *, config_path: str, run_dir: str) -> None:
        self.workers = workers
        self._loop = asyncio.get_running_loop()
        # Parsl logs at DEBUG to parsl.log in its run directory (and sets its loggers to
        # DEBUG); its lines stay out of the agent's own log until aclose restores them.
        self._log_state = (_PARSL_LOG.level, _PARSL_LOG.propagate)
        _PARSL_LOG.propagate = False
        try:
            config = load_config(config_path, run_dir=run_dir)
        except BaseException:
            self._restore_logging()
            raise
        self._pending: deque[_ParslCall] = deque()
        self._calls: dict[str, _ParslCall] = {}  # by key: submitted, not done or stopped
        self._inflight: set[_ParslCall] = set()  # handed to Parsl, no outcome yet
        self._dfk: DataFlowKernel | None = None
        self._broken: Outcome | None = None  # Parsl did not start: every call fails so
        # Parsl starts its interchange and worker pools as commands found on PATH
        # (interchange.py, process_worker_pool.py, installed beside this interpreter): an
        # agent run as .venv/bin/fxbroker without an activated environment finds them too.
        _put_on_path(os.path.dirname(sys.executable))
        # Parsl starts in a thread (its interchange takes a while), which runs to its end even
        # if the agent is cancelled meanwhile: aclose then cleans up what it started.
        self._starting = self._loop.run_in_executor(None, DataFlowKernel, config)
        self._start = asyncio.create_task(self._started(), name="fxbroker-parsl-start")

    # -- the engine interface ----------------------------------------------------------

    @property
    def lookahead(self) -> int:
        return self.workers

    @property
    def running(self) -> int:
        return sum(1 for job in self._inflight if not job.stopped)

    def started(self, key: str) -> bool:
        job = self._calls.get(key)
        return job is not None and job.handed

    def submit(self, key: str, call: Call, *, walltime_s: float | None, done: Done) -> None:
        job = _ParslCall(key, call, walltime_s, done)
        self._calls[key] = job
        self._pending.append(job)
        self._loop.call_soon(self._pump)

    def stop(self, key: str) -> None:
        job = self._calls.pop(key, None)
        if job is not None:
            job.stopped = True  # dropped if pending; in Parsl, it runs on (module docstring)

    # -- handing calls to Parsl --------------------------------------------------------

    async def _started(self) -> None:
        try:
            self._dfk = await asyncio.shield(self._starting)
        except Exception as exc:
            log.exception("the Parsl executor did not start")
            self._broken = Outcome.failure(
                error_record(
                    WORKER_LOST, f"the Parsl executor did not start: {type(exc).__name__}: {exc}"
                )
            )
        self._pump()

    def _pump(self) -> None:
        """Hand Parsl what fits in the ``workers`` slots."""
        if self._broken is not None:
            while self._pending:
                job = self._pending.popleft()
                if not job.stopped:
                    self._finish(job, self._broken)
            return
        if self._dfk is None:
            return  # not started yet: _started pumps
        while self._pending and len(self._inflight) < self.workers:
            job = self._pending.popleft()
            if job.stopped:
                continue
            try:
                future: Future[Outcome] = self._dfk.submit(
                    parsl_job.run,
                    app_args=(job.call, job.walltime_s),
                    executors=[LABEL],
                    cache=False,
                    ignore_for_cache=None,
                    app_kwargs={},
                )
            except Exception as exc:  # Parsl refused it (cleaned up, say): the task fails
                log.exception("Parsl did not take a task")
                self._finish(job, _lost(f"was refused: {type(exc).__name__}: {exc}"))
                continue
            job.handed = True
            self._inflight.add(job)
            future.add_done_callback(functools.partial(self._back, job))

    def _back(self, job: _ParslCall, future: Future[Outcome]) -> None:
        """(a Parsl thread) The call ended: on to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._ended, job, future)

    def _ended(self, job: _ParslCall, future: Future[Outcome]) -> None:
        self._inflight.discard(job)
        if not job.stopped:
            self._finish(job, _outcome(job, future))
        self._pump()

    def _finish(self, job: _ParslCall, outcome: Outcome) -> None:
        if self._calls.get(job.key) is job:
            del self._calls[job.key]
            job.done(job.key, outcome)

    async def aclose(self) -> None:
        """Clean Parsl up: its blocks are cancelled (their workers killed, with what they
        still run) and its interchange stopped. Calls still in Parsl are the agent's to have
        stopped first (a drain)."""
        try:
            try:
                dfk = await asyncio.shield(self._starting)
            except Exception:
                return  # Parsl did not start (``_started`` logged why): nothing to clean up
            logs = _log_files(dfk.run_dir)
            cleanup = self._loop.run_in_executor(None, dfk.cleanup)
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:  # the workers must end all the same
                with contextlib.suppress(Exception):
                    await cleanup
                raise
            for handler in logs:  # Parsl's clean-up detaches its log file but leaves it open
                handler.close()
        finally:
            self._start.cancel()
            self._restore_logging()

    def _restore_logging(self) -> None:
        level, propagate = self._log_state
        _PARSL_LOG.setLevel(level)
        _PARSL_LOG.propagate = propagate


def _put_on_path(folder: str) -> None:
    """Put ``folder`` first on this process's ``PATH`` (inherited by what Parsl starts)
    unless it is there already."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    if folder not in entries:
        os.environ["PATH"] = os.pathsep.join([folder, *filter(None, entries)])


def _log_files(run_dir: str) -> list[logging.FileHandler]:
    """The handlers of Parsl's log files in ``run_dir`` (on Parsl's loggers)."""
    folder = os.path.abspath(run_dir)  # as logging.FileHandler names its file
    return [
        handler
        for name in ("parsl", "concurrent.futures")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.FileHandler)
        and handler.baseFilename.startswith(folder + "/")
    ]


def _outcome(job: _ParslCall, future: Future[Outcome]) -> Outcome:
    if future.cancelled():
        return _lost("was cancelled by Parsl")
    exc = future.exception()
    if exc is None:
        outcome = future.result()
        if parsl_job.reached_walltime(outcome) and job.walltime_s is not None:
            return walltime_exceeded(job.walltime_s)
        return outcome
    return _lost(f"failed in Parsl without an outcome: {type(exc).__name__}: {exc}")


def _lost(why: str) -> Outcome:
    return Outcome.failure(error_record(WORKER_LOST, f"the Parsl task running this task {why}"))
