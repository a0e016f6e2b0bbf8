"""The agent's outbox: outcomes held until the gateway answers them, re-sent after a
reconnect, bounded by withholding credit rather than by dropping."""

from __future__ import annotations

from collections.abc import Iterable

from service_common.agent_protocol.codec import FRAME_OVERHEAD_BYTES, outcome_bytes
from service_common.agent_protocol.frames import (
    FRAME_BYTES_MAX,
    ITEMS_PER_FRAME_MAX,
    DeliveryRef,
    Outcomes,
    Refusal,
    Settled,
    TaskOutcome,
)


class Outbox:
    """The agent's outcomes, held from the moment a task ends until the gateway answers.

    * Every outcome is sent (:meth:`next_frame`) and kept until a ``settled`` frame names it,
      settled or refused (:meth:`acknowledge`); refusals are returned, for the agent to log.
    * When a connection ends, every outcome not yet answered is unsent again
      (:meth:`disconnected`); the next hello names them (:meth:`refs`) and they are sent
      again after the welcome, in the order they were added. Outcomes of tasks the welcome
      calls ``lost`` are forgotten (:meth:`forget_lost`) and returned, for the agent to log.
    * **Bounds without dropping.** The outbox never drops an outcome for lack of room. The
      agent keeps it within ``max_outcomes`` by granting credit only while every task it
      holds or has credit for has room (:meth:`room`): each makes exactly one outcome. Past
      ``max_bytes`` it grants no credit at all until answers free space, so the bytes held
      pass the bound by at most the outcomes of the tasks already in hand.
    """

    def __init__(self, *, max_outcomes: int = 10_000, max_bytes: int = 256 * 1024 * 1024):
        if max_outcomes < 1 or max_bytes < 1:
            raise ValueError("an outbox holds at least one outcome and one byte")
        self.max_outcomes = max_outcomes
        self.max_bytes = max_bytes
        self._held: dict[str, tuple[TaskOutcome, int]] = {}  # delivery id -> outcome, size
        self._unsent: dict[str, None] = {}  # delivery ids not sent on this connection, in order
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def bytes(self) -> int:
        """The estimated encoded size of the outcomes held."""
        return self._bytes

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def room(self, in_hand: int) -> int:
        """How much more credit the agent may grant while ``in_hand`` tasks (running,
        waiting for a slot, or granted and not yet received) will each add an outcome."""
        if self._bytes >= self.max_bytes:
            return 0
        return max(0, self.max_outcomes - len(self._held) - in_hand)

    def add(self, outcome: TaskOutcome) -> None:
        """Hold ``outcome`` until it is answered. ``ValueError`` when one is already held for
        the same delivery."""
        d = outcome.delivery_id
        if d in self._held:
            raise ValueError(f"an outcome for delivery {d} is already held")
        size = outcome_bytes(outcome)
        self._held[d] = (outcome, size)
        self._unsent[d] = None
        self._bytes += size

    def next_frame(self, *, max_frame_bytes: int = FRAME_BYTES_MAX) -> Outcomes | None:
        """The next ``outcomes`` frame to send (the oldest unsent outcomes, as many as fit,
        at least one), now counted as sent; ``None`` when everything is sent."""
        if not self._unsent:
            return None
        budget = max_frame_bytes - FRAME_OVERHEAD_BYTES
        batch: list[TaskOutcome] = []
        used = 0
        for d in self._unsent:
            outcome, size = self._held[d]
            if batch and (used + size > budget or len(batch) >= ITEMS_PER_FRAME_MAX):
                break
            batch.append(outcome)
            used += size
        for o in batch:
            del self._unsent[o.delivery_id]
        return Outcomes(tuple(batch))

    def acknowledge(self, frame: Settled) -> list[Refusal]:
        """Forget every outcome ``frame`` answers; returns its refusals of held outcomes.
        An answer for an outcome the outbox does not hold (answered twice, forgotten as
        lost, or a refusal naming another task) is ignored."""
        for d in frame.delivery_ids:
            self._forget(d)
        return [r for r in frame.refused if self._forget(r.delivery_id, r.task_id)]

    def disconnected(self) -> None:
        """The connection is gone: every outcome held is to be sent again, oldest first."""
        self._unsent = dict.fromkeys(self._held)

    def refs(self) -> tuple[DeliveryRef, ...]:
        """The deliveries of the outcomes held, for the next hello's ``held``."""
        return tuple(outcome.ref for outcome, _ in self._held.values())

    def forget_lost(self, task_ids: Iterable[str]) -> list[TaskOutcome]:
        """Forget and return the held outcomes of the tasks a welcome called lost."""
        lost = set(task_ids)
        dropped = [o for o, _ in self._held.values() if o.task_id in lost]
        for o in dropped:
            self._forget(o.delivery_id)
        return dropped

    def _forget(self, delivery_id: str, task_id: str | None = None) -> bool:
        held = self._held.get(delivery_id)
        if held is None or (task_id is not None and held[0].task_id != task_id):
            return False
        del self._held[delivery_id]
        self._unsent.pop(delivery_id, None)
        self._bytes -= held[1]
        return True
