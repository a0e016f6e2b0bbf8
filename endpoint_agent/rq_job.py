"""What an ``rq worker`` of the site runs for the rq engine (:mod:`endpoint_agent.rq_engine`).

Each ``def`` task is one rq job of :func:`run`, whose arguments are the agent's *channel*
(two keys on the site's Redis, named by :func:`channel_keys`) and the call's fields as the
process engine's worker gets them (:class:`~endpoint_agent.worker.Call`). The rq worker
must import ``endpoint_agent`` (``pip install fxbroker`` in the workers' environment, or
``PYTHONPATH`` naming a checkout); it needs no platform Redis and no credential.

:func:`run`, once started:

1. *the fence*: ``HSETNX <fence> <job id> started``. The agent takes a job back with
   ``HSETNX <fence> <job id> stopped``; whichever comes first wins, so a job the agent took
   back never runs, and the agent knows exactly whether it must stop a started one;
2. pushes ``started`` to the agent's event list, runs the call with
   :func:`~endpoint_agent.worker.run_call` (which never raises for the task's own faults),
   pushes the :class:`~endpoint_agent.worker.Outcome`, and returns it too.

rq's own ends are reported by :func:`on_failure` (rq's job timeout, which carries the
task's walltime, and anything raised around the call) and :func:`on_stopped` (rq's
stop-job command). Messages are pickled tuples ``(job id, kind, value)``: the site's Redis
is trusted the way rq itself trusts it (rq pickles every job's arguments and result).
Cost per job on the worker: two round trips to the site's Redis (fence, then started)
and one push of the outcome, besides rq's own. The push waits out an outage of the site's
Redis (a restart) for up to ``PUSH_FOR_S``. An outcome lost beyond that is reported
``WorkerLost`` once rq's status says the job ended; should rq never say so, the task stays
with the agent until it stops, and is handed back then.
"""

from __future__ import annotations

import pickle
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from endpoint_agent import capture
from endpoint_agent.worker import Call, Limits, Outcome, describe, run_call
from service_common.retry import DEFAULT_BACKOFF

if TYPE_CHECKING:
    from redis import Redis
    from rq.job import Job

KEY_PREFIX = "fxbroker:rq"
"""Keys of the rq engine on the site's Redis (never the platform's) start with this."""

TIMEOUT = ("rq.timeouts", "JobTimeoutException")
"""What rq raises in a job past its ``job_timeout`` (module, type)."""
PUSH_FOR_S = 60.0
"""How long a job keeps trying to push its outcome while the site's Redis is away."""
STARTED = "started"
STOPPED = "stopped"

Kind = Literal["started", "outcome", "timeout", "failed", "stopped"]
Message = tuple[str, Kind, Any]
"""``(job id, kind, value)``: ``outcome`` carries an :class:`Outcome`, ``failed`` an
:class:`~sdk.messages.ExceptionRecord`, the others ``None``."""


def channel_keys(token: str) -> tuple[str, str]:
    """The event list and the fence hash of one engine instance (``token`` is unique)."""
    return f"{KEY_PREFIX}:{token}:events", f"{KEY_PREFIX}:{token}:fence"


def encode(job_id: str, kind: Kind, value: Any = None) -> bytes:
    return pickle.dumps((job_id, kind, value), protocol=pickle.HIGHEST_PROTOCOL)


def decode(message: bytes) -> Message:
    job_id, kind, value = pickle.loads(message)
    return str(job_id), kind, value


def call_args(events: str, fence: str, call: Call) -> tuple[Any, ...]:
    """The rq job's arguments for ``call`` (plain values: no class of ours in rq's hash)."""
    allowed = None if call.allowed is None else sorted(call.allowed)
    limits = call.limits
    return (
        events,
        fence,
        call.function_id,
        call.code,
        call.payload,
        allowed,
        (limits.max_result_bytes, limits.max_output_chars, list(limits.result_strategies)),
    )


def run(
    events: str,
    fence: str,
    function_id: str,
    code: str,
    payload: str,
    allowed: list[str] | None,
    limits: tuple[int, int, list[str]],
) -> Outcome | None:
    """Run one call in the rq worker (see the module docstring); ``None`` when the agent
    took the job back before it started."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None, "run() is an rq job's function"
    connection = job.connection
    if not connection.hsetnx(fence, job.id, STARTED):
        return None  # taken back: the agent handed the task back or it was cancelled
    connection.rpush(events, encode(job.id, "started"))
    max_result_bytes, max_output_chars, strategies = limits
    call = Call(
        function_id,
        code,
        payload,
        None if allowed is None else frozenset(allowed),
        Limits(max_result_bytes, max_output_chars, tuple(strategies)),
    )
    capture.install()  # what the call prints is its own, as in the process engine's workers
    try:
        outcome = run_call(call)
    finally:
        capture.uninstall()
    record = outcome.exception
    if record is not None and (record["module"], record["type"]) == TIMEOUT:
        # rq's timeout fired inside the function, which run_call reports as its raise.
        push(connection, events, encode(job.id, "timeout"))
    else:
        push(connection, events, encode(job.id, "outcome", outcome))
    return outcome


def push(connection: Redis, events: str, message: bytes) -> None:
    """Push an outcome, waiting out an outage of the site's Redis for up to
    ``PUSH_FOR_S`` (a restart): the call is done, and its outcome is worth the wait."""
    import redis

    deadline = time.monotonic() + PUSH_FOR_S
    failures = 0
    while True:
        try:
            connection.rpush(events, message)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            failures += 1
            delay_s = DEFAULT_BACKOFF.delay_s(failures)
            if time.monotonic() + delay_s > deadline:
                raise
            time.sleep(delay_s)


def on_failure(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """rq's failure callback: its job timeout (the walltime), or a fault around the call."""
    from rq.timeouts import JobTimeoutException

    events = str(job.args[0])
    if isinstance(exc, JobTimeoutException):
        connection.rpush(events, encode(job.id, "timeout"))
    elif exc is not None:
        connection.rpush(events, encode(job.id, "failed", describe(exc)))


def on_stopped(job: Job, connection: Redis) -> None:
    """rq's stopped callback: the agent's stop-job command ended the job."""
    connection.rpush(str(job.args[0]), encode(job.id, "stopped"))
