"""The agent protocol's vocabulary: constants, error codes, records and frames.

Every frame is a frozen dataclass whose ``TYPE`` is its wire ``type``; records are the
items that frames carry in lists. :mod:`~service_common.agent_protocol.codec` turns them
into bytes and back; the rules they obey are in :mod:`service_common.agent_protocol`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from sdk.messages import ExceptionRecord
from sdk.states import TERMINAL_STATES, TaskState
from service_common.errors import ServiceError

AGENT_PATH = "/v1/endpoint"
"""The gateway's WebSocket route."""
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""Every version this code speaks; hello offers them, the gateway picks the highest shared."""
FRAME_BYTES_MAX = 64 * 1024 * 1024
"""The largest frame either side accepts unless told less (above the 10 MiB result limit)."""
ITEMS_PER_FRAME_MAX = 10_000
"""Most tasks, outcomes, refs, codes or ids one list of one frame may hold."""
CREDIT_MAX = 1_000_000
"""Most credit that may be outstanding on one connection."""
ID_CHARS_MAX = 128
TEXT_CHARS_MAX = 1024
"""Longest short text (host, version, engine, error message, strategy, accelerator id)."""

# Error codes (``error`` frames and refusals).
BAD_FRAME = "BAD_FRAME"
"""Not one msgpack map of a known type with well-formed fields. Fatal."""
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
"""The hello offers no version the gateway speaks. Fatal."""
UNEXPECTED_FRAME = "UNEXPECTED_FRAME"
"""A frame out of order: anything before hello, or a second hello. Fatal."""
CREDIT_OVERFLOW = "CREDIT_OVERFLOW"
"""A grant would put the outstanding credit above :data:`CREDIT_MAX`. Fatal."""
NOT_HANDED = "NOT_HANDED"
"""Refusal: that delivery of that task was not handed to this connection (logged)."""
DUPLICATE_OUTCOME = "DUPLICATE_OUTCOME"
"""Refusal: an outcome for that delivery is already being settled."""
LEASE_LOST = "LEASE_LOST"
"""Refusal: the task is no longer this agent's (its lease lapsed); nothing was written."""
UNAVAILABLE = "UNAVAILABLE"
"""The gateway cannot reach its store; it retries; windows pause, outcomes wait."""
INTERNAL = "INTERNAL"
"""The gateway failed on its own side. Fatal."""

FATAL_CODES = frozenset(
    {BAD_FRAME, UNSUPPORTED_VERSION, UNEXPECTED_FRAME, CREDIT_OVERFLOW, INTERNAL}
)
CLOSE_CODES: Mapping[str, int] = {
    BAD_FRAME: 1002,
    UNSUPPORTED_VERSION: 1002,
    UNEXPECTED_FRAME: 1002,
    CREDIT_OVERFLOW: 1008,
    INTERNAL: 1011,
}
"""The WebSocket close code that follows each fatal error."""


class ProtocolError(ServiceError):
    """A frame broke the protocol: ``code`` is one of the codes above, ``message`` says how
    (naming the field, as ``tasks[3].attempt``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES

    def frame(self) -> Error:
        """The ``error`` frame that reports this."""
        return Error(self.code, self.message)


def check_outcome(
    state: TaskState,
    result: object,
    exception: object,
    error: Callable[[str], Exception],
) -> None:
    """Raise ``error(message)`` unless the outcome's fields fit its state."""
    if state is TaskState.SUCCESS and (result is None or exception is not None):
        raise error("a success outcome carries a result and no exception")
    if state is TaskState.FAILED and (exception is None or result is not None):
        raise error("a failed outcome carries an exception and no result")
    if state is TaskState.CANCELLED and (result is not None or exception is not None):
        raise error("a cancelled outcome carries neither result nor exception")
    if state not in TERMINAL_STATES:
        raise error(f"an outcome's state is terminal, not {state.value!r}")


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """One handing of one task to an agent."""

    task_id: str
    delivery_id: str


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the agent can run: its engine, ``workers`` for ``def`` functions,
    ``max_concurrency`` slots for ``async def`` ones, ``prefetch`` tasks it may hold beyond
    free workers, and the accelerator ids its workers are pinned to."""

    engine: str
    workers: int
    max_concurrency: int
    prefetch: int = 0
    accelerators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a window: what the agent runs and the delivery it answers with."""

    task_id: str
    delivery_id: str
    attempt: int
    function_id: str
    payload: str
    walltime_s: float | None = None
    result_strategies: tuple[str, ...] = ()
    """The strategy ids the result may be serialized with, the first that can (empty: the
    agent's default)."""

    @property
    def ref(self) -> DeliveryRef:
        return DeliveryRef(self.task_id, self.delivery_id)


@dataclass(frozen=True, slots=True)
class FunctionCode:
    function_id: str
    code: str


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one delivery of one task ended, with what it printed and when it ran."""

    task_id: str
    delivery_id: str
    state: TaskState
    completed_at: float
    result: str | None = None
    exception: ExceptionRecord | None = None
    stdout: str = ""
    stderr: str = ""
    started_at: float | None = None

    def __post_init__(self) -> None:
        check_outcome(self.state, self.result, self.exception, ValueError)

    @property
    def ref(self) -> DeliveryRef:
        return DeliveryRef(self.task_id, self.delivery_id)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An outcome the gateway will not settle, and why (a code above)."""

    task_id: str
    delivery_id: str
    code: str
    message: str


# -- frames ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    agent: str
    host: str
    version: str
    capacity: Capacity
    running: tuple[DeliveryRef, ...] = ()
    held: tuple[DeliveryRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Credit:
    TYPE: ClassVar[str] = "credit"
    grant: int


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Take back up to ``count`` credit the agent no longer wants (answered by
    :class:`Withdrawn`)."""

    TYPE: ClassVar[str] = "withdraw"
    count: int


@dataclass(frozen=True, slots=True)
class Outcomes:
    TYPE: ClassVar[str] = "outcomes"
    outcomes: tuple[TaskOutcome, ...]


@dataclass(frozen=True, slots=True)
class Status:
    TYPE: ClassVar[str] = "status"
    workers: int
    busy: int
    queued: int
    held: int
    draining: bool = False


@dataclass(frozen=True, slots=True)
class HandBack:
    TYPE: ClassVar[str] = "hand_back"
    tasks: tuple[DeliveryRef, ...]


@dataclass(frozen=True, slots=True)
class NeedCode:
    TYPE: ClassVar[str] = "need_code"
    function_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    version: int
    endpoint_id: str
    lease_ms: int
    heartbeat_s: float
    walltime_s: float | None = None
    allowed_strategies: tuple[str, ...] | None = None
    max_frame_bytes: int = FRAME_BYTES_MAX
    lost: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Tasks:
    TYPE: ClassVar[str] = "tasks"
    tasks: tuple[Task, ...]
    functions: tuple[FunctionCode, ...] = ()


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The credit a ``withdraw`` took back (0 when all of it was used or being used)."""

    TYPE: ClassVar[str] = "withdrawn"
    count: int


@dataclass(frozen=True, slots=True)
class Functions:
    TYPE: ClassVar[str] = "functions"
    functions: tuple[FunctionCode, ...]
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settled:
    TYPE: ClassVar[str] = "settled"
    delivery_ids: tuple[str, ...]
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Drain:
    TYPE: ClassVar[str] = "drain"
    grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str


AgentFrame = Hello | Credit | Withdraw | Outcomes | Status | HandBack | NeedCode
GatewayFrame = Welcome | Tasks | Withdrawn | Functions | Settled | Cancel | Drain | Error
Frame = AgentFrame | GatewayFrame
