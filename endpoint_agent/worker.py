"""What runs one task: load the function, unpack the payload, call, serialize the outcome.

:func:`run_call` is what a worker process (or a worker thread) executes; it takes a small
picklable :class:`Call` and returns a small picklable :class:`Outcome`, and it never raises
for anything the task's owner controls: code or a payload that does not deserialize, a
function that raises (even ``SystemExit``), a result that cannot be serialized or is larger
than the endpoint allows (``ResultTooLarge``) all become a ``failed`` outcome carrying an
:class:`~sdk.messages.ExceptionRecord` with the full traceback as seen on the endpoint.
:func:`run_coroutine` is the twin for ``async def`` functions, awaited in the agent's event
loop. Both capture what the function prints (:mod:`endpoint_agent.capture`) and return it
beside the result.

Deserialized functions are cached per process by function id (:func:`load_function`), so a
worker deserializes each function once, not once per task. A function id always names the
same code, so the cache never goes stale; it is bounded, oldest entry evicted first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any

from endpoint_agent.capture import Capture, Captured
from endpoint_agent.globus_shell import adapt
from endpoint_agent.result_encoding import encode_result
from sdk.errors import DeserializationError, SerializationError
from sdk.messages import ExceptionRecord, error_record, exception_record
from sdk.serialize import deserialize, strategy_of, unpack_payload
from sdk.states import TaskState

CACHE_SIZE = 1024
"""How many deserialized functions one process keeps."""

RESULT_TOO_LARGE = "ResultTooLarge"
WORKER_LOST = "WorkerLost"
WALLTIME_EXCEEDED = "WalltimeExceeded"
TASK_CANCELLED = "TaskCancelled"
FUNCTION_NOT_ALLOWED = "FunctionNotAllowed"
FUNCTION_NOT_FOUND = "FunctionNotFound"

_functions: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one task may produce: result size, captured output per stream, and the
    strategies its result may be serialized with (ids, the first that can; empty: the
    default, see :mod:`endpoint_agent.result_encoding`)."""

    max_result_bytes: int = 10 * 1024 * 1024
    max_output_chars: int = 64 * 1024
    result_strategies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Call:
    """One task as a worker needs it: the function's id and code, and the packed payload."""

    function_id: str
    code: str
    payload: str
    allowed: frozenset[str] | None = None
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task ended: ``success`` with a result buffer, ``failed`` with a record, or
    ``cancelled``; plus what the function printed (empty when nothing)."""

    state: TaskState
    result: str | None = None
    exception: ExceptionRecord | None = None
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def success(cls, result: str) -> Outcome:
        return cls(TaskState.SUCCESS, result=result)

    @classmethod
    def failure(cls, record: ExceptionRecord) -> Outcome:
        return cls(TaskState.FAILED, exception=record)

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls(TaskState.CANCELLED)

    def with_output(self, captured: Captured) -> Outcome:
        return replace(self, stdout=captured.stdout.getvalue(), stderr=captured.stderr.getvalue())


def worker_lost(attempt: int, max_attempts: int) -> ExceptionRecord:
    """Why a task started ``attempt`` times fails instead of starting again."""
    return error_record(
        WORKER_LOST,
        f"the agents running this task were lost {attempt - 1} times (max_attempts is "
        f"{max_attempts}); it is not started again",
    )


def walltime_exceeded(walltime_s: float) -> Outcome:
    """How a task stopped for running past its walltime ends."""
    return Outcome.failure(
        error_record(
            WALLTIME_EXCEEDED,
            f"the task ran past its walltime of {walltime_s:g} s and was stopped",
        )
    )


def describe(exc: BaseException) -> ExceptionRecord:
    """:func:`~sdk.messages.exception_record`, safe against exceptions that fail to print."""
    try:
        return exception_record(exc)
    except Exception:
        return error_record(
            type(exc).__qualname__,
            "the exception raised could not be turned into text",
            module=type(exc).__module__,
        )


def load_function(
    function_id: str, code: str, *, allowed: Iterable[str] | None = None
) -> Callable[..., Any]:
    """The function ``code`` holds, deserialized once per process and cached by id.

    Raises :class:`~sdk.errors.DeserializationError` when the code's strategy is not
    allowed, the buffer does not deserialize, or it holds something that is not callable.
    """
    if allowed is not None and strategy_of(code) not in set(allowed):
        # Checked before the cache: another caller may have loaded it under other rules.
        raise DeserializationError(
            f"serialization strategy {strategy_of(code)!r} is not allowed here"
        )
    fn = _functions.get(function_id)
    if fn is not None:
        return fn
    loaded: object = deserialize(code, allowed=allowed)
    if not callable(loaded):
        raise DeserializationError(
            f"the code of function {function_id} holds a {type(loaded).__name__}, not a callable"
        )
    fn = adapt(loaded)  # a Globus Compute ShellFunction gets its sandbox
    if len(_functions) >= CACHE_SIZE:
        del _functions[next(iter(_functions))]
    _functions[function_id] = fn
    return fn


def finish(value: Any, limits: Limits = Limits()) -> Outcome:
    """Serialize a function's return value into a ``success`` outcome (or say why not)."""
    try:
        buffer = encode_result(value, limits.result_strategies)
    except Exception as exc:
        error = SerializationError(f"the function's result could not be serialized: {exc}")
        error.__cause__ = exc
        return Outcome.failure(describe(error))
    if len(buffer) > limits.max_result_bytes:
        return Outcome.failure(
            error_record(
                RESULT_TOO_LARGE,
                f"the result is {len(buffer)} bytes serialized; this endpoint keeps results "
                f"of at most {limits.max_result_bytes} bytes",
            )
        )
    return Outcome.success(buffer)


def run_call(call: Call) -> Outcome:
    """Run one ``def`` task to completion; never raises for bad input or user errors."""
    try:
        fn = load_function(call.function_id, call.code, allowed=call.allowed)
        args, kwargs = unpack_payload(call.payload, allowed=call.allowed)
    except DeserializationError as exc:
        return Outcome.failure(describe(exc))
    with Capture(call.limits.max_output_chars) as captured:
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            outcome = Outcome.failure(describe(exc))
        else:
            outcome = finish(value, call.limits)
    return outcome.with_output(captured)


async def run_coroutine(
    fn: Callable[..., Coroutine[Any, Any, Any]],
    payload: str,
    *,
    allowed: frozenset[str] | None = None,
    limits: Limits = Limits(),
) -> Outcome:
    """Run one ``async def`` task in the running loop; never raises but on cancellation."""
    try:
        args, kwargs = unpack_payload(payload, allowed=allowed)
    except DeserializationError as exc:
        return Outcome.failure(describe(exc))
    with Capture(limits.max_output_chars) as captured:
        try:
            value = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            outcome = Outcome.failure(describe(exc))
        else:
            outcome = finish(value, limits)
    return outcome.with_output(captured)
