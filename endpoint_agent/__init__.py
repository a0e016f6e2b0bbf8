"""The fxbroker endpoint agent: pulls its endpoint's tasks from Redis, runs them, writes results.

``async with Agent(AgentSettings(...)) as agent: await agent.run()``, or
``await run_agent(AgentSettings.from_env())`` with SIGINT/SIGTERM handling.

Modules: :mod:`.settings` (configuration), :mod:`.agent` (the read/dispatch loop),
:mod:`.stream` (the task stream, task starts, code fetch), :mod:`.functions` (loading and
classifying functions), :mod:`.engines` (process and thread pools), :mod:`.worker` (running
one task), :mod:`.results` (the batched completion writer), :mod:`.heartbeat`.
"""

from endpoint_agent.agent import Agent, run_agent
from endpoint_agent.settings import AgentSettings

__all__ = ["Agent", "AgentSettings", "run_agent"]
