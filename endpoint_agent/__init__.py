"""The fxbroker endpoint agent: pulls its endpoint's tasks from Redis, runs them, writes results.

``async with Agent(AgentSettings(...)) as agent: await agent.run()``, or
``await run_agent(AgentSettings.from_env())`` with SIGINT/SIGTERM handling.

Modules: :mod:`.settings` (configuration), :mod:`.agent` (the read/dispatch loop, drain),
:mod:`.stream` (the task stream: reads, claims, starts, lease renewal, hand-backs, code and
allow-list lookups), :mod:`.functions` (loading, classifying and allowing functions),
:mod:`.engines` (the engine interface and the thread engine), :mod:`.processes` (the process
engine: one worker process per slot or accelerator), :mod:`.worker` (running one task),
:mod:`.capture` (per-task stdout/stderr), :mod:`.results` (the batched completion writer),
:mod:`.leases`, :mod:`.cancels` (the cancel subscription), :mod:`.heartbeat`,
:mod:`.accelerators` (finding the node's GPUs).
"""

from endpoint_agent.agent import Agent, run_agent
from endpoint_agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings", "run_agent"]
