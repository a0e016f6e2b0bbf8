"""The gateway's per-connection ledger: credit, deliveries, code sent, outcomes answered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from service_common.agent_protocol.codec import code_bytes, negotiate, split_to_fit, task_bytes
from service_common.agent_protocol.frames import (
    CREDIT_MAX,
    CREDIT_OVERFLOW,
    DUPLICATE_OUTCOME,
    FRAME_BYTES_MAX,
    LEASE_LOST,
    NOT_HANDED,
    SUPPORTED_VERSIONS,
    UNEXPECTED_FRAME,
    AgentFrame,
    Cancel,
    Credit,
    DeliveryRef,
    FunctionCode,
    Functions,
    HandBack,
    Hello,
    NeedCode,
    Outcomes,
    ProtocolError,
    Refusal,
    Settled,
    Task,
    TaskOutcome,
    Tasks,
    Withdraw,
    Withdrawn,
)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What :meth:`Ledger.accept` made of an ``outcomes`` frame: the outcomes to settle, and
    the refusals to answer at once."""

    outcomes: tuple[TaskOutcome, ...]
    refused: tuple[Refusal, ...]


class Ledger:
    """The gateway's record of one agent connection, and the rules it keeps.

    * Hello first, once (:meth:`admit`, :meth:`greet`).
    * Credit: grants add up to at most :data:`CREDIT_MAX`; a window never holds more tasks
      than the credit left (:meth:`window` raises ``ValueError`` rather than exceed it); a
      withdraw takes back only credit that no read has reserved (:meth:`withdraw`).
    * Code once: a window carries the code of each function not sent before on this
      connection, and only those (:meth:`needs_code` says which to fetch).
    * Outcomes: only for a delivery handed to this connection (or adopted from the agent's
      hello), once each (:meth:`accept`); each is answered once (:meth:`answer`).
    * Leases: :meth:`leases` lists every delivery the gateway must keep renewing.

    Nothing survives the connection: a reconnecting agent starts a new ledger with hello.
    """

    def __init__(self, *, max_frame_bytes: int = FRAME_BYTES_MAX) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.version: int | None = None
        """The version agreed in :meth:`greet` (``None`` before hello)."""
        self.agent = ""
        self._credit = 0
        self._handed: dict[str, DeliveryRef] = {}  # delivery id -> ref, no outcome yet
        self._settling: dict[str, DeliveryRef] = {}  # outcome accepted, not yet answered
        self._by_task: dict[str, str] = {}  # task id -> delivery id, of _handed
        self._code_sent: set[str] = set()

    @property
    def credit(self) -> int:
        """Tasks the agent has granted and not yet been sent."""
        return self._credit

    @property
    def handed(self) -> int:
        """Deliveries handed to this connection whose outcome has not come."""
        return len(self._handed)

    def admit(self, frame: AgentFrame) -> None:
        """Check a frame's place in the order; ``UNEXPECTED_FRAME`` when out of it."""
        if isinstance(frame, Hello):
            if self.version is not None:
                raise ProtocolError(UNEXPECTED_FRAME, "hello was already said on this connection")
        elif self.version is None:
            raise ProtocolError(UNEXPECTED_FRAME, f"a {frame.TYPE} frame came before hello")

    def greet(self, hello: Hello, *, supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
        """Agree on the version (:func:`negotiate`) and remember the agent; returns the
        version for the welcome. The deliveries hello names are adopted with :meth:`adopt`
        once the gateway has checked they are still this agent's."""
        self.admit(hello)
        self.version = negotiate(hello.versions, supported)
        self.agent = hello.agent
        return self.version

    def adopt(self, refs: Iterable[DeliveryRef]) -> None:
        """Take over deliveries made to an earlier connection of this agent (named in its
        hello, checked by the gateway); they use no credit."""
        for ref in refs:
            self._handed[ref.delivery_id] = ref
            self._by_task[ref.task_id] = ref.delivery_id

    def grant(self, frame: Credit) -> None:
        """Add the agent's grant; ``CREDIT_OVERFLOW`` past :data:`CREDIT_MAX`."""
        if self._credit + frame.grant > CREDIT_MAX:
            raise ProtocolError(
                CREDIT_OVERFLOW,
                f"granting {frame.grant} on top of {self._credit} passes the most outstanding "
                f"credit, {CREDIT_MAX}",
            )
        self._credit += frame.grant

    def withdraw(self, frame: Withdraw, *, reserved: int = 0) -> Withdrawn:
        """Take back what the agent no longer wants: ``frame.count`` or the credit not used
        and not ``reserved`` (by a read in flight, whose tasks will use it), whichever is
        less. The answer must be sent after every ``tasks`` frame whose credit a
        :meth:`window` took before this call, so the agent's count stays exact."""
        if reserved < 0:
            raise ValueError(f"reserved must be at least 0, not {reserved}")
        taken = max(0, min(frame.count, self._credit - reserved))
        self._credit -= taken
        return Withdrawn(taken)

    def needs_code(self, function_ids: Iterable[str]) -> list[str]:
        """The ids among ``function_ids`` whose code was not sent on this connection."""
        return [fid for fid in dict.fromkeys(function_ids) if fid not in self._code_sent]

    def window(self, tasks: Sequence[Task], codes: Mapping[str, str]) -> list[Tasks]:
        """Hand ``tasks`` to the agent: the ``tasks`` frames to send, in order (one unless a
        frame would pass ``max_frame_bytes``), each carrying the code of the functions it is
        first to name. ``codes`` holds the code of at least every id :meth:`needs_code`
        named. Uses one credit per task.

        Raises ``ValueError``, changing nothing, when the tasks need more credit than is left,
        a delivery id is already handed, or a function's code is missing."""
        if len(tasks) > self._credit:
            raise ValueError(f"{len(tasks)} tasks but the agent granted only {self._credit}")
        first_use: dict[int, FunctionCode] = {}  # task index -> code that rides with it
        fids: set[str] = set()
        deliveries: set[str] = set()
        for i, task in enumerate(tasks):
            d = task.delivery_id
            if d in self._handed or d in self._settling or d in deliveries:
                raise ValueError(f"delivery {d} is already handed to this connection")
            deliveries.add(d)
            fid = task.function_id
            if fid not in self._code_sent and fid not in fids:
                if fid not in codes:
                    raise ValueError(f"the code of function {fid} is needed and was not given")
                fids.add(fid)
                first_use[i] = FunctionCode(fid, codes[fid])

        def cost(i: int) -> int:
            code = first_use.get(i)
            return task_bytes(tasks[i]) + (0 if code is None else code_bytes(code))

        frames = [
            Tasks(
                tuple(tasks[i] for i in run),
                tuple(first_use[i] for i in run if i in first_use),
            )
            for run in split_to_fit(range(len(tasks)), cost, self.max_frame_bytes)
        ]
        for task in tasks:
            self._handed[task.delivery_id] = task.ref
            self._by_task[task.task_id] = task.delivery_id
            self._code_sent.add(task.function_id)
        self._credit -= len(tasks)
        return frames

    def functions(self, frame: NeedCode, codes: Mapping[str, str | None]) -> list[Functions]:
        """Answer ``need_code`` with the code ``codes`` holds (``None`` or absent: missing),
        split to fit ``max_frame_bytes``."""
        found = [FunctionCode(fid, code) for fid in frame.function_ids if (code := codes.get(fid))]
        missing = tuple(fid for fid in frame.function_ids if not codes.get(fid))
        self._code_sent.update(c.function_id for c in found)
        runs = split_to_fit(found, code_bytes, self.max_frame_bytes) or [[]]
        return [Functions(tuple(run), missing if i == 0 else ()) for i, run in enumerate(runs)]

    def accept(self, frame: Outcomes) -> Accepted:
        """Sort an ``outcomes`` frame: outcomes of deliveries handed to this connection are
        to be settled (and are now *settling*); the others are refused, ``NOT_HANDED`` or
        ``DUPLICATE_OUTCOME``, and must be logged and answered."""
        accepted: list[TaskOutcome] = []
        refused: list[Refusal] = []
        for o in frame.outcomes:
            d = o.delivery_id
            ref = self._handed.get(d) or self._settling.get(d)
            if ref is None or ref.task_id != o.task_id:
                refused.append(
                    Refusal(
                        o.task_id,
                        d,
                        NOT_HANDED,
                        f"task {o.task_id} was not handed to this connection as delivery {d}",
                    )
                )
            elif d in self._settling:
                refused.append(
                    Refusal(
                        o.task_id,
                        d,
                        DUPLICATE_OUTCOME,
                        f"an outcome for delivery {d} is already being settled",
                    )
                )
            else:
                del self._handed[d]
                if self._by_task.get(o.task_id) == d:
                    del self._by_task[o.task_id]
                self._settling[d] = ref
                accepted.append(o)
        return Accepted(tuple(accepted), tuple(refused))

    def answer(
        self,
        settled: Iterable[str] = (),
        *,
        lost: Iterable[str] = (),
        refused: Iterable[Refusal] = (),
    ) -> Settled:
        """The ``settled`` frame for outcomes the gateway has finished with: ``settled``
        (stored) and ``lost`` (the store refused them: the lease lapsed) are delivery ids
        :meth:`accept` passed, now forgotten; ``refused`` are refusals :meth:`accept` made.

        Raises ``ValueError``, changing nothing, for an id that is not settling."""
        settled, lost = tuple(settled), tuple(lost)
        for d in (*settled, *lost):
            if d not in self._settling:
                raise ValueError(f"delivery {d} has no outcome being settled")
        lost_refusals = []
        for d in lost:
            ref = self._settling[d]
            lost_refusals.append(
                Refusal(
                    ref.task_id,
                    d,
                    LEASE_LOST,
                    f"task {ref.task_id} is no longer this agent's: its "
                    "lease lapsed and nothing was written",
                )
            )
        for d in (*settled, *lost):
            self._settling.pop(d, None)
        return Settled(settled, (*refused, *lost_refusals))

    def hand_back(self, frame: HandBack) -> tuple[list[DeliveryRef], list[DeliveryRef]]:
        """Take back deliveries the agent will not finish: ``(returned, ignored)``. Only a
        delivery handed to this connection with no outcome yet is returned (the gateway
        queues it again); the others are ignored and should be logged."""
        returned: list[DeliveryRef] = []
        ignored: list[DeliveryRef] = []
        for ref in frame.tasks:
            if self._handed.get(ref.delivery_id) != ref:
                ignored.append(ref)
                continue
            del self._handed[ref.delivery_id]
            if self._by_task.get(ref.task_id) == ref.delivery_id:
                del self._by_task[ref.task_id]
            returned.append(ref)
        return returned, ignored

    def cancel(self, task_ids: Iterable[str]) -> Cancel | None:
        """The ``cancel`` frame for the tasks among ``task_ids`` that this connection runs
        (handed, no outcome yet); ``None`` when it runs none of them."""
        mine = tuple(tid for tid in dict.fromkeys(task_ids) if tid in self._by_task)
        return Cancel(mine) if mine else None

    def leases(self) -> list[DeliveryRef]:
        """Every delivery whose lease the gateway keeps renewing for this connection: handed
        ones and those whose outcome is being settled."""
        return [*self._handed.values(), *self._settling.values()]
