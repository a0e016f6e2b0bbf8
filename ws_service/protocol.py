"""The WebSocket push protocol as pure code: frames in, commands out; notices in, frames out.

Nothing here does I/O. :func:`parse_frame` turns a client frame into a :class:`Subscribe` or
:class:`Unsubscribe` command, or into the :class:`~sdk.messages.ErrorFrame` to answer with.
:func:`parse_notices`, :func:`result_items` and :func:`results_frames` turn what one ``XREAD``
of a task-group results stream returned (plus the task hashes of notices that do not carry
their outcome inline, :func:`needs_task_hash`) into ``results`` frames.

Frames (JSON text, shapes in :mod:`sdk.messages`)::

    client -> {"type": "subscribe", "task_group_id": "...", "cursor": "0"}
    server -> {"type": "subscribed", "task_group_id": "...", "cursor": "0"}
    server -> {"type": "results", "task_group_id": "...", "cursor": "...", "results": [...]}
    client -> {"type": "unsubscribe", "task_group_id": "..."}
    server -> {"type": "error", "code": "...", "message": "...", "task_group_id"?: "..."}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sdk.messages import (
    ErrorFrame,
    ResultItem,
    SubscribedFrame,
    error_record,
    parse_exception,
)
from sdk.states import TaskState
from sdk.wire import (
    BAD_FRAME,
    START_CURSOR,
)
from service_common.tasks.settle import INLINE, INLINE_FIELDS

_GROUP_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CURSOR = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
_RESULTS_HEAD = '{{"type":"results","task_group_id":{gid},"cursor":{cursor},"results":['


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Push every result of ``task_group_id`` after ``cursor``, then each new one."""

    task_group_id: str
    cursor: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop pushing results of ``task_group_id``."""

    task_group_id: str


Command = Subscribe | Unsubscribe


@dataclass(frozen=True, slots=True)
class Notice:
    """One completion notice read from a task-group results stream."""

    cursor: str
    """The stream entry id; subscribing from it resumes after this notice."""
    task_id: str
    state: str
    inline: Mapping[str, str] | None = None
    """The outcome's fields, when the notice carries them (small outcomes); else the task
    hash has them."""


def error_frame(code: str, message: str, task_group_id: str | None = None) -> ErrorFrame:
    frame: ErrorFrame = {"type": "error", "code": code, "message": message}
    if task_group_id is not None:
        frame["task_group_id"] = task_group_id
    return frame


def subscribed_frame(command: Subscribe) -> SubscribedFrame:
    return {"type": "subscribed", "task_group_id": command.task_group_id, "cursor": command.cursor}


def encode(frame: Mapping[str, Any]) -> str:
    """A frame as compact JSON text (orjson: a result is mostly one long base64 string)."""
    return orjson.dumps(frame).decode()


def parse_frame(data: str | bytes) -> Command | ErrorFrame:
    """Parse one client frame. ``cursor`` may be left out of a subscribe: it means ``"0"``.

    A frame that is not UTF-8 JSON, not an object, of an unknown type, or with a malformed
    task group id or cursor gives a ``BAD_FRAME`` error frame (carrying the group id when one
    could be read), never an exception."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError:
            return error_frame(BAD_FRAME, "frames must be UTF-8 JSON text")
    try:
        obj: Any = json.loads(data)
    except ValueError:
        return error_frame(BAD_FRAME, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return error_frame(BAD_FRAME, "frame must be a JSON object")
    kind = obj.get("type")
    if kind not in ("subscribe", "unsubscribe"):
        return error_frame(
            BAD_FRAME, f"unknown frame type {kind!r}; expected 'subscribe' or 'unsubscribe'"
        )
    group = obj.get("task_group_id")
    if not isinstance(group, str) or not _GROUP_ID.fullmatch(group):
        return error_frame(
            BAD_FRAME, "task_group_id must be 1-128 characters of letters, digits, '-' or '_'"
        )
    if kind == "unsubscribe":
        return Unsubscribe(group)
    cursor = obj.get("cursor", START_CURSOR)
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        return error_frame(
            BAD_FRAME, "cursor must be a stream id like '0' or '1700000000000-0'", group
        )
    return Subscribe(group, cursor)


def parse_notices(entries: Sequence[tuple[str, Mapping[str, str]]]) -> list[Notice]:
    """The completion notices among stream entries, in stream order.

    An entry without a ``task_id`` is not a notice and is skipped (its cursor still counts:
    the caller advances past it). A missing ``state`` is left empty for the task hash to fill.
    A notice that carries its outcome (``inline``, written by
    :func:`service_common.tasks.settle.notice_fields`) keeps those fields."""
    return [
        Notice(entry_id, fields["task_id"], fields.get("state", ""), _inline(fields))
        for entry_id, fields in entries
        if fields.get("task_id")
    ]


def _inline(fields: Mapping[str, str]) -> dict[str, str] | None:
    if fields.get(INLINE) != "1" or not fields.get("state"):
        return None
    return {name: fields[name] for name in INLINE_FIELDS if fields.get(name)}


def result_item(notice: Notice, fields: Mapping[str, str]) -> ResultItem:
    """One pushed result: the notice's state with the result or exception of the task hash
    (or of the notice itself, when inline), and the task's ``stdout`` / ``stderr`` when it
    printed anything.

    A task hash that expired before delivery yields a ``failed`` item whose exception says
    so, rather than a success without a result."""
    if notice.inline is not None:
        fields = notice.inline
    elif not fields:
        return {
            "task_id": notice.task_id,
            "state": TaskState.FAILED.value,
            "cursor": notice.cursor,
            "exception": error_record(
                "ResultExpired", f"the result of task {notice.task_id} expired before delivery"
            ),
        }
    item: ResultItem = {
        "task_id": notice.task_id,
        "state": notice.state or fields.get("state", ""),
        "cursor": notice.cursor,
    }
    if fields.get("result"):
        item["result"] = fields["result"]
    if fields.get("stdout"):
        item["stdout"] = fields["stdout"]
    if fields.get("stderr"):
        item["stderr"] = fields["stderr"]
    try:
        record = parse_exception(fields.get("exception"))
    except ValueError:
        record = error_record("CorruptException", "the task's exception record is not JSON")
    if record is not None:
        item["exception"] = record
    return item


def needs_task_hash(notice: Notice) -> bool:
    """Whether pushing ``notice`` needs its task hash read (its outcome is not inline)."""
    return notice.inline is None


def result_items(
    notices: Sequence[Notice], hashes: Mapping[str, Mapping[str, str]]
) -> list[ResultItem]:
    """Pair notices with their task hashes (by task id; a task with no hash there expired)."""
    return [result_item(n, hashes.get(n.task_id, {})) for n in notices]


def results_frames(
    task_group_id: str, items: Sequence[ResultItem], *, max_frame_bytes: int
) -> list[str]:
    """Encode ``items`` as ``results`` frames, in order: one frame for all of them unless
    that frame would pass ``max_frame_bytes``, then as few frames as fit (one item per frame
    at least, whatever its size). Each frame's ``cursor`` is that of its last item."""
    frames: list[str] = []
    batch: list[str] = []
    cursor = ""
    size = 0
    gid = json.dumps(task_group_id)

    def flush() -> None:
        head = _RESULTS_HEAD.format(gid=gid, cursor=json.dumps(cursor))
        frames.append(head + ",".join(batch) + "]}")

    for item in items:
        encoded = encode(item)
        overhead = len(_RESULTS_HEAD) + len(gid) + 2 * len(item["cursor"]) + 8
        if batch and size + len(encoded) + 1 + overhead > max_frame_bytes:
            flush()
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
        cursor = item["cursor"]
    if batch:
        flush()
    return frames
