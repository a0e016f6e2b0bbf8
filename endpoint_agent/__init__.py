"""The fxbroker endpoint agent: receives its endpoint's tasks, runs them, reports their outcomes.

``async with Agent(AgentSettings(...)) as agent: await agent.run()``, or
``await run_agent(AgentSettings.from_env())`` with SIGINT/SIGTERM handling.

Modules: :mod:`.settings` (configuration), :mod:`.agent` (the read/dispatch loop, drain),
:mod:`.transport` (what the loop asks of the platform), :mod:`.gateway` (the endpoint
gateway: one WebSocket, the credential; the agent never sees Redis),
:mod:`.functions` (loading, classifying and allowing functions),
:mod:`.engines` (the engine interface and the thread engine), :mod:`.processes` (the process
engine: one worker process per slot or accelerator, fed in batches), :mod:`.batches` (the
pipe to a worker process and the worker's loop), :mod:`.rq_engine` (the rq engine: calls as
jobs for a site's ``rq worker``s), :mod:`.rq_job` (what those workers run),
:mod:`.worker` (running one task),
:mod:`.capture` (per-task stdout/stderr), :mod:`.result_encoding` (a result's buffer, by
the strategies its submit named), :mod:`.globus_shell` (Globus Compute's ShellFunction in a
sandbox), :mod:`.accelerators` (finding the node's GPUs).
The Redis side (the task stream, starting and settling, leases, cancels, the heartbeat)
lives in the gateway (:mod:`ws_service.gateway`, on :mod:`service_common.tasks`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from endpoint_agent.agent import Agent, run_agent
    from endpoint_agent.settings import AgentSettings

_EXPORTS = {
    "Agent": "endpoint_agent.agent",
    "AgentSettings": "endpoint_agent.settings",
    "run_agent": "endpoint_agent.agent",
}

__all__ = ["Agent", "AgentSettings", "run_agent"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): a worker process, spawned to import endpoint_agent.processes, loads
    # neither Redis nor the agent loop.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
