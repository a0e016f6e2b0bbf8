"""What a Parsl worker runs for the parsl engine (:mod:`endpoint_agent.parsl_engine`).

Each ``def`` task is one Parsl app call of :func:`run` on the engine's
``HighThroughputExecutor``; the worker must import ``endpoint_agent`` (``pip install
fxbroker`` in the workers' environment, or ``PYTHONPATH`` naming a checkout) and needs no
platform Redis and no credential. :func:`run` runs the call with
:func:`~endpoint_agent.worker.run_call` (which never raises for the task's own faults), so
results, raises with their remote traceback, and the captured stdout and stderr are the
process engine's.

*Walltime.* Parsl's own app ``walltime`` raises in the worker from a timer thread, which
Python delivers only between bytecodes: a task blocked in a call into C (``time.sleep``, a
socket read) would run on. :func:`run` arms ``SIGALRM`` instead (an HTE worker runs its
task in its process's main thread), as rq's timeout does: the signal interrupts a blocking
call, and :class:`WalltimeReached` raised in the task is reported as ``WalltimeExceeded``
by the engine. A task that catches it (a bare ``except``) or blocks signals runs on.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from endpoint_agent import capture
from endpoint_agent.worker import Call, Outcome, describe, run_call


class WalltimeReached(BaseException):
    """Raised in a task past its walltime (a ``BaseException``, so that ``except
    Exception`` in the task does not swallow it)."""


WALLTIME = (WalltimeReached.__module__, WalltimeReached.__name__)
"""How the raise of :class:`WalltimeReached` is named in an outcome's record."""


def _reached(signum: int, frame: FrameType | None) -> None:
    raise WalltimeReached("the task ran past its walltime")


def run(call: Call, walltime_s: float | None) -> Outcome:
    """Run ``call`` in the Parsl worker, stopped by ``SIGALRM`` after ``walltime_s``."""
    armed = walltime_s is not None and threading.current_thread() is threading.main_thread()
    previous = None
    if armed:
        assert walltime_s is not None
        previous = signal.signal(signal.SIGALRM, _reached)
        signal.setitimer(signal.ITIMER_REAL, walltime_s)
    capture.install()  # what the call prints is its own, as in the process engine's workers
    try:
        return run_call(call)
    except WalltimeReached as exc:  # the alarm came after the function, while finishing
        return Outcome.failure(describe(exc))
    finally:
        capture.uninstall()
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def reached_walltime(outcome: Outcome) -> bool:
    """Whether ``outcome`` is a task stopped by :func:`run`'s walltime."""
    record = outcome.exception
    return record is not None and (record["module"], record["type"]) == WALLTIME
