"""How a task's return value becomes its result buffer.

With no strategies named, dill: code for a callable, data for anything else
(:func:`sdk.serialize.serialize`). A task submitted through the Globus Compute routes may
name ``result_serializers``, which reach the agent as strategy ids (``11`` JSON, ``00`` dill
data, see :mod:`sdk.serialize`); the agent then keeps Globus Compute's rule
(``ComputeSerializer.serialize_from_list``): each strategy is tried in the order given, a data
strategy never takes a callable and a code strategy takes nothing else, and the first that
serializes the value makes the buffer. When none can, :func:`encode_result` raises one
:class:`~sdk.errors.SerializationError` naming every strategy and why it failed, and the
task fails with it (:func:`endpoint_agent.worker.finish`).

The buffer's two-character header names the strategy that made it, so fxbroker's SDK and
Globus Compute's both read it back without knowing which was chosen. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdk.errors import SerializationError
from sdk.serialize import STRATEGIES, serialize

NAMES = {"00": "DillDataBase64", "11": "JSONData", "01": "DillCode", "st": "source"}
"""What each strategy id is called in messages (Globus Compute's class names)."""


def _label(identifier: str) -> str:
    name = NAMES.get(identifier)
    return f"{identifier!r} ({name})" if name else repr(identifier)


def encode_result(value: Any, strategies: Sequence[str] = ()) -> str:
    """``value`` as one buffer: by the first of ``strategies`` that can serialize it (all
    of them tried in order), or by the default when ``strategies`` is empty.

    Raises :class:`~sdk.errors.SerializationError` when the default fails, or when every
    strategy listed fails (the message gives each one's reason)."""
    if not strategies:
        return serialize(value)
    is_code = callable(value)
    reasons: list[str] = []
    for identifier in strategies:
        strategy = STRATEGIES.get(identifier)
        if strategy is None:
            reasons.append(f"{_label(identifier)}: not a strategy this agent knows")
        elif strategy.for_code != is_code:
            kind = "code" if strategy.for_code else "data"
            what = "a callable" if is_code else "not callable"
            reasons.append(f"{_label(identifier)}: a {kind} strategy, and the result is {what}")
        else:
            try:
                return serialize(value, strategy)
            except SerializationError as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                reasons.append(f"{_label(identifier)}: {type(cause).__name__}: {cause}")
    raise SerializationError(
        f"none of the task's result serializers can serialize a {type(value).__name__}: "
        + "; ".join(reasons)
    )
