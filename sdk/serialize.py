"""Serialization, wire-compatible with Globus Compute's.

A *buffer* is a two-character strategy id, a newline, then the body:

======  ================================  =====
id      body                              kind
======  ================================  =====
``00``  ``dill.dumps`` then base64        data
``11``  ``json.dumps``                    data
``01``  ``dill.dumps`` then base64        code
``st``  ``<name>:<source text>``          code
======  ================================  =====

Several buffers are *packed* as ``<length>\\n<buffer>`` concatenated, the length
counted in characters. A task payload packs two buffers: the args tuple and the
kwargs dict. Everything here is pure: no I/O, no global state but the strategy table.
"""

from __future__ import annotations

import binascii
import inspect
import json
import pickle
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dill
import pybase64

from sdk.errors import DeserializationError, SerializationError

IDENTIFIER_LENGTH = 3
_PROTOCOL: int = dill.settings["protocol"]


@dataclass(frozen=True)
class Strategy:
    """One way of turning an object into a buffer body and back."""

    identifier: str
    for_code: bool
    dumps: Callable[[Any], str]
    loads: Callable[[str], Any]


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_PLAIN_ITEMS_MAX = 256
"""Plain data larger than this is left to dill: checking it would cost what it saves."""


def _plain(obj: Any) -> bool:
    """Whether ``obj`` is made only of builtin scalars in builtin tuples, lists and dicts
    (exact types, at most :data:`_PLAIN_ITEMS_MAX` items in all): data that ``pickle``
    writes exactly as ``dill`` does."""
    todo, seen = [obj], 0
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is tuple or kind is list:
            todo.extend(item)
            seen += len(item)
        elif kind is dict:
            todo.extend(item.keys())
            todo.extend(item.values())
            seen += 2 * len(item)
        else:
            return False
        if seen > _PLAIN_ITEMS_MAX:
            return False
    return True


def _dill_b64_dumps(obj: Any) -> str:
    # Plain data (most arguments and results) is pickled by the standard library, which
    # writes the same bytes as dill about twenty times faster (dill builds a Pickler of its
    # own per call); anything else by dill. One base64 line: Globus Compute writes
    # 76-character lines (``codecs.encode(..., "base64")``, a Python loop over 57-byte
    # chunks, most of the cost of a large argument) but decodes with
    # ``binascii.a2b_base64``, which takes either form.
    # pybase64's SIMD codec: the standard library's took 1.9 ms to encode and 4.0 ms to
    # decode a MiB (one of each per argument and per result), pybase64 0.07 and 0.06 ms.
    pickled = pickle.dumps(obj, protocol=_PROTOCOL) if _plain(obj) else dill.dumps(obj)
    return pybase64.b64encode_as_string(pickled)


_STOCK_LOADS_MAX = 4096
"""Pickles up to this many bytes are checked for :func:`_stock_loads_suffices`; larger ones
go to dill at once (the check would scan them to save a constant 1.5 us)."""


def _stock_loads_suffices(raw: bytes) -> bool:
    """Whether ``pickle.loads(raw)`` returns what ``dill.loads(raw)`` does.

    dill's unpickler differs from the standard one only for names it maps (the module
    ``__builtin__``'s ``__main__`` and ``NoneType``, the module ``dill.dill``) and for a top
    object whose class lives in ``__main__``; a pickle that names none of these modules (all
    plain data, which :func:`_dill_b64_dumps` writes with ``pickle``) loads the same either way,
    ten times faster without dill's per-call unpickler."""
    return (
        len(raw) <= _STOCK_LOADS_MAX
        and b"dill" not in raw
        and b"__main__" not in raw
        and b"__builtin__" not in raw
    )


def _dill_b64_loads(body: str) -> Any:
    try:
        raw = pybase64.b64decode(body, validate=True)  # one canonical line, as written here
    except binascii.Error:
        # Anything else (Globus Compute's 76-character lines, stray characters) as ever:
        # the standard library's lenient decoder, whose answers on such input are the rule.
        raw = binascii.a2b_base64(body)
    return pickle.loads(raw) if _stock_loads_suffices(raw) else dill.loads(raw)


def _source_dumps(fn: Any) -> str:
    return f"{fn.__name__}:{textwrap.dedent(inspect.getsource(fn))}"


def _source_loads(body: str) -> Any:
    name, source = body.split(":", 1)
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace[name]


DILL_DATA = Strategy("00", False, _dill_b64_dumps, _dill_b64_loads)
JSON_DATA = Strategy("11", False, json.dumps, json.loads)
DILL_CODE = Strategy("01", True, _dill_b64_dumps, _dill_b64_loads)
SOURCE_CODE = Strategy("st", True, _source_dumps, _source_loads)

STRATEGIES: dict[str, Strategy] = {
    s.identifier: s for s in (DILL_DATA, JSON_DATA, DILL_CODE, SOURCE_CODE)
}


def serialize(obj: Any, strategy: Strategy | None = None) -> str:
    """Serialize ``obj`` to one buffer; callables use dill code, anything else dill data."""
    if strategy is None:
        strategy = DILL_CODE if callable(obj) else DILL_DATA
    try:
        return f"{strategy.identifier}\n{strategy.dumps(obj)}"
    except Exception as exc:
        raise SerializationError(
            f"strategy {strategy.identifier!r} could not serialize {type(obj).__name__}: {exc}"
        ) from exc


def strategy_of(buffer: str) -> str:
    """The strategy id of a buffer, without deserializing it."""
    return buffer[: IDENTIFIER_LENGTH - 1]


def deserialize(buffer: str, *, allowed: Iterable[str] | None = None) -> Any:
    """Deserialize one buffer; ``allowed`` restricts the strategy ids accepted."""
    if len(buffer) < IDENTIFIER_LENGTH or buffer[IDENTIFIER_LENGTH - 1] != "\n":
        raise DeserializationError("buffer has no strategy header")
    ident = strategy_of(buffer)
    strategy = STRATEGIES.get(ident)
    if strategy is None:
        raise DeserializationError(f"unknown serialization strategy {ident!r}")
    if allowed is not None and ident not in set(allowed):
        raise DeserializationError(f"serialization strategy {ident!r} is not allowed here")
    try:
        return strategy.loads(buffer[IDENTIFIER_LENGTH:])
    except Exception as exc:
        raise DeserializationError(
            f"could not deserialize a {ident!r} buffer ({type(exc).__name__}: {exc}); "
            "was it made by a different Python or dill version?"
        ) from exc


def pack_buffers(buffers: Iterable[str]) -> str:
    """Pack buffers as ``<length>\\n<buffer>`` concatenated (length in characters)."""
    return "".join(f"{len(b)}\n{b}" for b in buffers)


def unpack_buffers(packed: str) -> list[str]:
    """Inverse of :func:`pack_buffers`."""
    buffers: list[str] = []
    pos = 0
    while pos < len(packed):
        newline = packed.find("\n", pos)
        if newline < 0:
            raise DeserializationError("packed buffer is truncated (no length line)")
        try:
            length = int(packed[pos:newline])
        except ValueError as exc:
            raise DeserializationError("packed buffer has a malformed length") from exc
        start = newline + 1
        if length < 0 or start + length > len(packed):
            raise DeserializationError("packed buffer is truncated")
        buffers.append(packed[start : start + length])
        pos = start + length
    return buffers


def pack_payload(args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> str:
    """The task payload: the args tuple and the kwargs dict, each serialized, packed."""
    if not args and not kwargs:
        return EMPTY_PAYLOAD
    return pack_buffers([serialize(tuple(args)), serialize(dict(kwargs or {}))])


def unpack_payload(
    payload: str, *, allowed: Iterable[str] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`pack_payload`."""
    allowed_set = None if allowed is None else set(allowed)
    if payload == EMPTY_PAYLOAD and (allowed_set is None or DILL_DATA.identifier in allowed_set):
        return (), {}
    buffers = unpack_buffers(payload)
    if len(buffers) != 2:
        raise DeserializationError(f"a task payload packs 2 buffers, this one {len(buffers)}")
    args = deserialize(buffers[0], allowed=allowed_set)
    kwargs = deserialize(buffers[1], allowed=allowed_set)
    if not isinstance(kwargs, dict):
        raise DeserializationError("the kwargs buffer of a task payload is not a dict")
    return tuple(args), kwargs


EMPTY_PAYLOAD = pack_buffers([serialize(()), serialize({})])
"""The payload of a call without arguments, the same bytes every time: packed and unpacked
without pickling."""
