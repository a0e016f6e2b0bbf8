"""What the agent's loop needs from the platform: the seam between the dispatch and
execution core (:mod:`endpoint_agent.agent`) and the way the agent reaches its endpoint's
tasks, :class:`~endpoint_agent.gateway.GatewayTransport` (the endpoint gateway over one
WebSocket, authenticated by the endpoint's credential; the agent never sees Redis).

The loop calls :meth:`Transport.receive` for the next window (as many tasks as it can take
now), :meth:`Transport.settle` for each outcome, :meth:`Transport.hand_back` for tasks it
will not finish, and :meth:`Transport.finish` when it stops. The transport calls back into
the agent through :class:`Host` (cancel a task, stop, what it holds, its status), keeps the
leases of what the agent holds, and reports each window's tasks as :class:`Received`,
already resolved to a function (or to the reason it cannot run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from endpoint_agent.functions import FunctionInfo
from endpoint_agent.worker import Outcome
from sdk.messages import ExceptionRecord


@dataclass(frozen=True, slots=True)
class Received:
    """One task a transport handed to the agent.

    ``key`` names this handing (a stream entry id, or a gateway delivery id): unique among
    what the agent holds. ``skip``: the task is already settled elsewhere, only acknowledge
    it (:meth:`Transport.settle` with no outcome). Otherwise ``failure`` says why it fails
    without running (not allowed, no code, a bad walltime, too many attempts), or
    ``function`` is what it runs, with the task's own ``walltime_s`` (``None``: none) and
    the ``result_strategies`` its result may be serialized with (empty: the default)."""

    key: str
    task_id: str
    attempt: int = 0
    payload: str = ""
    function: FunctionInfo | None = None
    failure: ExceptionRecord | None = None
    walltime_s: float | None = None
    result_strategies: tuple[str, ...] = ()
    skip: bool = False


class Host(Protocol):
    """What a transport may ask of the agent it serves."""

    def cancel(self, task_id: str) -> bool:
        """Stop task ``task_id`` (a cancel notice); True when the agent held it."""
        ...

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the agent as a drain does (``grace_s``: the running tasks' grace period)."""
        ...

    def held_keys(self) -> list[str]:
        """The keys of every task held: received and not yet settled or handed back."""
        ...

    def unfinished(self) -> list[Received]:
        """The tasks held whose outcome is not yet settled (running or waiting to)."""
        ...

    def forget(self, keys: Sequence[str]) -> None:
        """Stop the tasks ``keys`` name without an outcome: they are another agent's now."""
        ...

    def settled(self, keys: Sequence[str]) -> None:
        """The transport is done with the outcomes of ``keys``: free their slots."""
        ...

    def counts(self) -> tuple[int, int, bool]:
        """(tasks held, tasks running, draining)."""
        ...

    @property
    def wake(self) -> asyncio.Event:
        """Set when the agent may take more work (a slot freed, a stop requested); a
        transport sets it too when a window arrives."""
        ...


class Transport(Protocol):
    """How the agent reaches its endpoint's tasks (see the module docstring)."""

    name: str

    @property
    def connected(self) -> bool:
        """Whether the platform is reachable now (the connection is open and welcomed)."""
        ...

    @property
    def held_outcomes(self) -> int:
        """Outcomes reported and not yet answered by the platform."""
        ...

    async def open(self) -> None:
        """Acquire what the transport needs (connections); called once, in ``async with``."""
        ...

    async def aclose(self) -> None:
        """Release what :meth:`open` acquired."""
        ...

    async def start(
        self, *, stop: asyncio.Event, stopped: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        """Get ready to serve (waiting out an outage unless ``stop``, the agent's stop
        request, is set); returns the background tasks (heartbeat, leases, the connection)
        that run until ``stopped`` (the run is over) is set."""
        ...

    async def stopped(self) -> None:
        """The run is over: end what :meth:`start` began (after its background tasks saw
        the run's stopped event)."""
        ...

    async def receive(self, count: int, *, burst: bool) -> list[Received]:
        """The next window: at most ``count`` (>= 1) tasks, waiting a short while for them
        (not at all in ``burst`` mode when the transport can tell nothing is there).
        Raises what the transport's ``transient`` accepts while the platform is away."""
        ...

    async def want(self, count: int) -> None:
        """The loop wants at most ``count`` more tasks for now (it calls this with 0 when
        it can take nothing): credit granted past that may be taken back (:meth:`receive`
        does the same for its own ``count``)."""
        ...

    def settle(self, task: Received, outcome: Outcome | None) -> None:
        """Report ``task``'s outcome (``None``: only acknowledge a skipped task); the
        transport calls :meth:`Host.settled` once it is done with it."""
        ...

    async def hand_back(self, tasks: Sequence[Received]) -> None:
        """Give back tasks the agent will not finish (a drain); logs what it cannot."""
        ...

    async def draining(self) -> None:
        """The agent stops taking work: tell the platform (a heartbeat, a status frame)."""
        ...

    async def finish(self, grace_s: float | None) -> None:
        """The run ends: report every outcome still held. A stopping agent passes its
        ``grace_s``, the most it waits for a platform that is away (then what is unreported
        stays leased and runs again after its lease); ``None`` waits as long as it takes."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the platform is away for now (the loop waits it out)."""
        ...
