"""Frames to bytes and back: msgpack, strict validation, size estimates.

:func:`encode` turns a frame into the bytes of one binary WebSocket message;
:func:`decode_agent_frame` and :func:`decode_gateway_frame` turn bytes into a frame or raise
:class:`~service_common.agent_protocol.frames.ProtocolError` (``BAD_FRAME``) with a message
that names the offending field (``tasks[3].attempt``), never another exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

import msgpack

from sdk.messages import ExceptionRecord
from sdk.states import TERMINAL_STATES
from service_common.agent_protocol.frames import (
    BAD_FRAME,
    CREDIT_MAX,
    FRAME_BYTES_MAX,
    ID_CHARS_MAX,
    ITEMS_PER_FRAME_MAX,
    SUPPORTED_VERSIONS,
    TEXT_CHARS_MAX,
    UNSUPPORTED_VERSION,
    AgentFrame,
    Cancel,
    Capacity,
    Credit,
    DeliveryRef,
    Drain,
    Error,
    Frame,
    FunctionCode,
    Functions,
    GatewayFrame,
    HandBack,
    Hello,
    NeedCode,
    Outcomes,
    ProtocolError,
    Refusal,
    Settled,
    Status,
    Task,
    TaskOutcome,
    Tasks,
    Welcome,
    Withdraw,
    Withdrawn,
    check_outcome,
)

T = TypeVar("T")
FRAME_OVERHEAD_BYTES = 64
"""What a frame adds around its lists (type, field names, list headers), generously."""
ITEM_OVERHEAD_BYTES = 160
"""What one record adds to a frame beyond its ids and text, generously (field names, tags)."""
_ID = re.compile(rf"[!-~]{{1,{ID_CHARS_MAX}}}")

# -- encoding --------------------------------------------------------------------------


def _ref(ref: DeliveryRef) -> dict[str, Any]:
    return {"task_id": ref.task_id, "delivery_id": ref.delivery_id}


def _code(code: FunctionCode) -> dict[str, Any]:
    return {"function_id": code.function_id, "code": code.code}


def _task(task: Task) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "task_id": task.task_id,
        "delivery_id": task.delivery_id,
        "attempt": task.attempt,
        "function_id": task.function_id,
        "payload": task.payload,
        "walltime_s": task.walltime_s,
    }
    if task.result_strategies:
        wire["result_strategies"] = list(task.result_strategies)
    return wire


def _outcome(o: TaskOutcome) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "task_id": o.task_id,
        "delivery_id": o.delivery_id,
        "state": o.state.value,
        "completed_at": o.completed_at,
    }
    if o.result is not None:
        wire["result"] = o.result
    if o.exception is not None:
        wire["exception"] = dict(o.exception)
    if o.stdout:
        wire["stdout"] = o.stdout
    if o.stderr:
        wire["stderr"] = o.stderr
    if o.started_at is not None:
        wire["started_at"] = o.started_at
    return wire


def _fields(frame: Frame) -> dict[str, Any]:
    match frame:
        case Hello():
            c = frame.capacity
            return {
                "versions": list(frame.versions),
                "agent": frame.agent,
                "host": frame.host,
                "version": frame.version,
                "capacity": {
                    "engine": c.engine,
                    "workers": c.workers,
                    "max_concurrency": c.max_concurrency,
                    "prefetch": c.prefetch,
                    "accelerators": list(c.accelerators),
                },
                "running": [_ref(r) for r in frame.running],
                "held": [_ref(r) for r in frame.held],
            }
        case Outcomes():
            return {"outcomes": [_outcome(o) for o in frame.outcomes]}
        case HandBack():
            return {"tasks": [_ref(r) for r in frame.tasks]}
        case Tasks():
            return {
                "functions": [_code(c) for c in frame.functions],
                "tasks": [_task(t) for t in frame.tasks],
            }
        case Functions():
            return {"functions": [_code(c) for c in frame.functions], "missing": frame.missing}
        case Settled():
            refused = [
                {
                    "task_id": r.task_id,
                    "delivery_id": r.delivery_id,
                    "code": r.code,
                    "message": r.message,
                }
                for r in frame.refused
            ]
            return {"delivery_ids": frame.delivery_ids, "refused": refused}
        case _:  # flat frames: every field is a plain value or a tuple of them
            return {f.name: getattr(frame, f.name) for f in fields(frame)}


def encode(frame: Frame) -> bytes:
    """One frame as the bytes of one binary WebSocket message.

    Never fails for a frame built from its own types: a lone surrogate in a string (what a
    task may print, say), which UTF-8 cannot carry, is sent as ``?``, so the receiver's
    strict decoding never refuses a frame because of what a task wrote."""
    wire = {"type": frame.TYPE, **_fields(frame)}
    data: bytes = msgpack.packb(wire, use_bin_type=True, unicode_errors="replace")
    return data


# -- decoding --------------------------------------------------------------------------


def _bad(path: str, message: str) -> NoReturn:
    raise ProtocolError(BAD_FRAME, f"{path} {message}")


class _Fields:
    """Typed reads of one msgpack map; every failure names the field's path."""

    __slots__ = ("obj", "path")

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, dict):
            _bad(path, f"must be a map, not {type(obj).__name__}")
        self.obj: dict[str, Any] = obj
        self.path = path

    def _get(self, key: str) -> Any:
        try:
            return self.obj[key]
        except KeyError:
            _bad(f"{self.path}.{key}", "is missing")

    def id(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            _bad(
                f"{self.path}.{key}",
                f"must be 1-{ID_CHARS_MAX} printable ASCII characters "
                f"without spaces, not {_show(value)}",
            )
        return value

    def text(
        self, key: str, *, max_chars: int | None = TEXT_CHARS_MAX, default: str | None = None
    ) -> str:
        value = self.obj.get(key, default) if default is not None else self._get(key)
        if not isinstance(value, str):
            _bad(f"{self.path}.{key}", f"must be a string, not {_show(value)}")
        if max_chars is not None and len(value) > max_chars:
            _bad(f"{self.path}.{key}", f"must be at most {max_chars} characters")
        return value

    def integer(
        self, key: str, *, low: int = 0, high: int = 2**53, default: int | None = None
    ) -> int:
        value = self.obj.get(key, default) if default is not None else self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            _bad(
                f"{self.path}.{key}", f"must be an integer from {low} to {high}, not {_show(value)}"
            )
        return value

    def number(self, key: str, *, positive: bool = False, optional: bool = False) -> float | None:
        value = self.obj.get(key) if optional else self._get(key)
        if value is None and optional:
            return None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            sign = "above" if positive else "at least"
            _bad(f"{self.path}.{key}", f"must be a finite number {sign} 0, not {_show(value)}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.obj.get(key, False)
        if not isinstance(value, bool):
            _bad(f"{self.path}.{key}", f"must be true or false, not {_show(value)}")
        return value

    def items(self, key: str, *, optional: bool = False) -> list[Any]:
        value = self.obj.get(key, []) if optional else self._get(key)
        if not isinstance(value, list):
            _bad(f"{self.path}.{key}", f"must be a list, not {_show(value)}")
        if len(value) > ITEMS_PER_FRAME_MAX:
            _bad(
                f"{self.path}.{key}",
                f"lists {len(value)} items; at most {ITEMS_PER_FRAME_MAX} are allowed",
            )
        return value

    def records(
        self,
        key: str,
        parse: Callable[[_Fields], Any],
        *,
        fast: Callable[[Any], Any] | None = None,
        optional: bool = False,
    ) -> tuple[Any, ...]:
        """Parse each item of the list ``key``: with ``fast`` (a check that returns the record,
        or ``None`` for anything unusual) when given, else, or when it says ``None``, with the
        precise ``parse``, which names what is wrong."""
        items = self.items(key, optional=optional)
        if fast is not None:
            records = [fast(item) for item in items]
            if None not in records:
                return tuple(records)
        path = f"{self.path}.{key}"
        return tuple(parse(_Fields(item, f"{path}[{i}]")) for i, item in enumerate(items))

    def ids(self, key: str, *, optional: bool = False) -> tuple[str, ...]:
        path = f"{self.path}.{key}"
        items = self.items(key, optional=optional)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not _ID.fullmatch(item):
                _bad(f"{path}[{i}]", f"must be an id, not {_show(item)}")
        return tuple(items)

    def texts(self, key: str, *, optional: bool = False) -> tuple[str, ...]:
        items = self.items(key, optional=optional)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not 0 < len(item) <= TEXT_CHARS_MAX:
                _bad(f"{self.path}.{key}[{i}]", f"must be a non-empty string, not {_show(item)}")
        return tuple(items)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__} of {len(text)} characters"


def _parse_ref(f: _Fields) -> DeliveryRef:
    return DeliveryRef(f.id("task_id"), f.id("delivery_id"))


def _parse_code(f: _Fields) -> FunctionCode:
    return FunctionCode(f.id("function_id"), f.text("code", max_chars=None))


def _parse_task(f: _Fields) -> Task:
    return Task(
        task_id=f.id("task_id"),
        delivery_id=f.id("delivery_id"),
        attempt=f.integer("attempt", low=1),
        function_id=f.id("function_id"),
        payload=f.text("payload", max_chars=None),
        walltime_s=f.number("walltime_s", positive=True, optional=True),
        result_strategies=f.texts("result_strategies", optional=True),
    )


_is_id = _ID.fullmatch
_INT_MAX = 2**53


def _fast_ref(o: Any) -> DeliveryRef | None:
    if type(o) is not dict:
        return None
    tid, did = o.get("task_id"), o.get("delivery_id")
    if type(tid) is str and type(did) is str and _is_id(tid) and _is_id(did):
        return DeliveryRef(tid, did)
    return None


def _fast_task(o: Any) -> Task | None:
    """The common, well-formed task without per-field calls (decoding a window is hot)."""
    if type(o) is not dict:
        return None
    tid, did, fid = o.get("task_id"), o.get("delivery_id"), o.get("function_id")
    attempt, payload, walltime = o.get("attempt"), o.get("payload"), o.get("walltime_s")
    if "result_strategies" in o:
        return None  # rare (Globus Compute submits only): the precise path reads it
    if (
        type(attempt) is int
        and 1 <= attempt <= _INT_MAX
        and type(payload) is str
        and (walltime is None or (type(walltime) is float and 0 < walltime < math.inf))
        and type(tid) is str
        and type(did) is str
        and type(fid) is str
        and _is_id(tid)
        and _is_id(did)
        and _is_id(fid)
    ):
        return Task(tid, did, attempt, fid, payload, walltime)
    return None


def _fast_outcome(o: Any) -> TaskOutcome | None:
    """The common outcome (a success with its result, or a cancel, no exception) without
    per-field calls; anything else takes the precise path."""
    if type(o) is not dict or "exception" in o:
        return None
    tid, did, state, result = (
        o.get("task_id"),
        o.get("delivery_id"),
        o.get("state"),
        o.get("result"),
    )
    done, started = o.get("completed_at"), o.get("started_at")
    stdout, stderr = o.get("stdout", ""), o.get("stderr", "")
    if (
        (
            (state == "success" and type(result) is str)
            or (state == "cancelled" and "result" not in o)
        )
        and type(done) is float
        and 0 <= done < math.inf
        and (started is None or (type(started) is float and 0 <= started < math.inf))
        and type(stdout) is str
        and type(stderr) is str
        and type(tid) is str
        and type(did) is str
        and _is_id(tid)
        and _is_id(did)
    ):
        return TaskOutcome(
            tid, did, _OUTCOME_STATES[state], done, result, None, stdout, stderr, started
        )
    return None


def _parse_exception(f: _Fields) -> ExceptionRecord:
    record: ExceptionRecord = {
        "type": f.text("type"),
        "module": f.text("module"),
        "message": f.text("message", max_chars=None),
        "traceback": f.text("traceback", max_chars=None),
    }
    if "pickled" in f.obj:
        record["pickled"] = f.text("pickled", max_chars=None)
    return record


_OUTCOME_STATES = {state.value: state for state in TERMINAL_STATES}


def _parse_outcome(f: _Fields) -> TaskOutcome:
    raw_state = f.obj.get("state")
    state = _OUTCOME_STATES.get(raw_state) if isinstance(raw_state, str) else None
    if state is None:
        _bad(f"{f.path}.state", f"must be one of {sorted(_OUTCOME_STATES)}, not {_show(raw_state)}")
    result = f.text("result", max_chars=None) if "result" in f.obj else None
    exception = (
        _parse_exception(_Fields(f.obj["exception"], f"{f.path}.exception"))
        if ("exception" in f.obj)
        else None
    )
    check_outcome(state, result, exception, lambda m: ProtocolError(BAD_FRAME, f"{f.path}: {m}"))
    return TaskOutcome(
        task_id=f.id("task_id"),
        delivery_id=f.id("delivery_id"),
        state=state,
        completed_at=f.number("completed_at") or 0.0,
        result=result,
        exception=exception,
        stdout=f.text("stdout", max_chars=None, default=""),
        stderr=f.text("stderr", max_chars=None, default=""),
        started_at=f.number("started_at", optional=True),
    )


def _parse_refusal(f: _Fields) -> Refusal:
    return Refusal(f.id("task_id"), f.id("delivery_id"), f.id("code"), f.text("message"))


def _parse_capacity(f: _Fields) -> Capacity:
    return Capacity(
        engine=f.text("engine"),
        workers=f.integer("workers"),
        max_concurrency=f.integer("max_concurrency"),
        prefetch=f.integer("prefetch", default=0),
        accelerators=f.texts("accelerators"),
    )


def _parse_hello(f: _Fields) -> Hello:
    versions = f.items("versions")
    if not versions or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions):
        _bad("hello.versions", f"must list at least one integer version, not {_show(versions)}")
    return Hello(
        versions=tuple(versions),
        agent=f.id("agent"),
        host=f.text("host"),
        version=f.text("version"),
        capacity=_parse_capacity(_Fields(f._get("capacity"), "hello.capacity")),
        running=f.records("running", _parse_ref, fast=_fast_ref, optional=True),
        held=f.records("held", _parse_ref, fast=_fast_ref, optional=True),
    )


def _parse_welcome(f: _Fields) -> Welcome:
    strategies = None if f.obj.get("allowed_strategies") is None else f.texts("allowed_strategies")
    return Welcome(
        version=f.integer("version", low=1),
        endpoint_id=f.id("endpoint_id"),
        lease_ms=f.integer("lease_ms", low=1),
        heartbeat_s=f.number("heartbeat_s", positive=True) or 0.0,
        walltime_s=f.number("walltime_s", positive=True, optional=True),
        allowed_strategies=strategies,
        max_frame_bytes=f.integer("max_frame_bytes", low=1024, high=FRAME_BYTES_MAX),
        lost=f.ids("lost", optional=True),
    )


_AGENT_FRAMES: dict[str, Callable[[_Fields], AgentFrame]] = {
    Hello.TYPE: _parse_hello,
    Credit.TYPE: lambda f: Credit(f.integer("grant", low=1, high=CREDIT_MAX)),
    Withdraw.TYPE: lambda f: Withdraw(f.integer("count", low=1, high=CREDIT_MAX)),
    Outcomes.TYPE: lambda f: Outcomes(f.records("outcomes", _parse_outcome, fast=_fast_outcome)),
    Status.TYPE: lambda f: Status(
        f.integer("workers"),
        f.integer("busy"),
        f.integer("queued"),
        f.integer("held"),
        f.flag("draining"),
    ),
    HandBack.TYPE: lambda f: HandBack(f.records("tasks", _parse_ref, fast=_fast_ref)),
    NeedCode.TYPE: lambda f: NeedCode(f.ids("function_ids")),
}
_GATEWAY_FRAMES: dict[str, Callable[[_Fields], GatewayFrame]] = {
    Welcome.TYPE: _parse_welcome,
    Tasks.TYPE: lambda f: Tasks(
        f.records("tasks", _parse_task, fast=_fast_task),
        f.records("functions", _parse_code, optional=True),
    ),
    Withdrawn.TYPE: lambda f: Withdrawn(f.integer("count", high=CREDIT_MAX)),
    Functions.TYPE: lambda f: Functions(
        f.records("functions", _parse_code), f.ids("missing", optional=True)
    ),
    Settled.TYPE: lambda f: Settled(
        f.ids("delivery_ids"), f.records("refused", _parse_refusal, optional=True)
    ),
    Cancel.TYPE: lambda f: Cancel(f.ids("task_ids")),
    Drain.TYPE: lambda f: Drain(f.number("grace_s", optional=True)),
    Error.TYPE: lambda f: Error(f.id("code"), f.text("message")),
}


def _decode(data: object, parsers: Mapping[str, Callable[[_Fields], Any]], max_bytes: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        _bad("frame", "must be a binary message, not text")
    if len(data) > max_bytes:
        _bad("frame", f"is {len(data)} bytes; at most {max_bytes} are allowed")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        # msgpack's own errors (ExtraData, FormatError, StackError) are ValueErrors too.
        reason = str(exc) or type(exc).__name__
        raise ProtocolError(BAD_FRAME, f"frame is not one msgpack value: {reason}") from exc
    if not isinstance(obj, dict):
        _bad("frame", f"must be a msgpack map, not {type(obj).__name__}")
    kind = obj.get("type")
    parse = parsers.get(kind) if isinstance(kind, str) else None
    if parse is None:
        _bad("frame", f"has unknown type {_show(kind)}; expected one of {sorted(parsers)}")
    return parse(_Fields(obj, str(kind)))


def decode_agent_frame(data: object, *, max_frame_bytes: int = FRAME_BYTES_MAX) -> AgentFrame:
    """The frame an agent sent; raises :class:`ProtocolError` (``BAD_FRAME``) for anything
    else, never another exception."""
    frame: AgentFrame = _decode(data, _AGENT_FRAMES, max_frame_bytes)
    return frame


def decode_gateway_frame(data: object, *, max_frame_bytes: int = FRAME_BYTES_MAX) -> GatewayFrame:
    """The frame the gateway sent; raises :class:`ProtocolError` (``BAD_FRAME``) for
    anything else, never another exception."""
    frame: GatewayFrame = _decode(data, _GATEWAY_FRAMES, max_frame_bytes)
    return frame


def negotiate(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version both sides speak; ``UNSUPPORTED_VERSION`` when there is none."""
    offered_set, supported_set = set(offered), set(supported)
    shared = offered_set & supported_set
    if not shared:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"the agent speaks versions {sorted(offered_set)}, the gateway {sorted(supported_set)}",
        )
    return max(shared)


def utf8_bytes(text: str | None) -> int:
    """The UTF-8 length of ``text`` (0 for ``None``)."""
    return 0 if text is None else len(text.encode("utf-8", "surrogatepass"))


def outcome_bytes(outcome: TaskOutcome) -> int:
    """An upper estimate of what ``outcome`` adds to an ``outcomes`` frame."""
    size = ITEM_OVERHEAD_BYTES + len(outcome.task_id) + len(outcome.delivery_id)
    size += utf8_bytes(outcome.result) + utf8_bytes(outcome.stdout) + utf8_bytes(outcome.stderr)
    if outcome.exception is not None:
        size += sum(utf8_bytes(str(v)) + 16 for v in outcome.exception.values())
    return size


def task_bytes(task: Task) -> int:
    """An upper estimate of what ``task`` adds to a ``tasks`` frame."""
    return (
        ITEM_OVERHEAD_BYTES
        + len(task.task_id)
        + len(task.delivery_id)
        + len(task.function_id)
        + utf8_bytes(task.payload)
        + sum(len(s) + 8 for s in task.result_strategies)
    )


def split_to_fit(items: Sequence[T], size: Callable[[T], int], budget: int) -> list[list[T]]:
    """``items`` in order, in as few runs as fit a frame of ``budget`` bytes and the item
    limit (one item per run at least, whatever its size)."""
    runs: list[list[T]] = []
    run: list[T] = []
    used = 0
    budget -= FRAME_OVERHEAD_BYTES
    for item in items:
        cost = size(item)
        if run and (used + cost > budget or len(run) >= ITEMS_PER_FRAME_MAX):
            runs.append(run)
            run, used = [], 0
        run.append(item)
        used += cost
    if run:
        runs.append(run)
    return runs


def code_bytes(code: FunctionCode) -> int:
    """An upper estimate of what ``code`` adds to a frame."""
    return ITEM_OVERHEAD_BYTES + len(code.function_id) + utf8_bytes(code.code)
