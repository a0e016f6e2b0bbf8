"""Every Redis key and channel name fxbroker uses is built here, and nowhere else.

The services and the endpoint agent all import this module (the SDK owns the wire
formats, as the funcX SDK did for its endpoint). Keys that one Lua script or MULTI
touches share a hash tag, so the same code runs on Redis Cluster.

Layout (``fx`` is the default prefix; tests use a prefix of their own)::

    fx:{ep:<endpoint_id>}:tasks     Stream   queued tasks of one endpoint; consumer group "agents"
    fx:{ep:<endpoint_id>}:status    Hash     the agents' heartbeat, with a TTL
    fx:{ep:<endpoint_id>}:cancel    Channel  cancel notices for the endpoint's agents
    fx:{ep:<endpoint_id>}:allowed_functions
                                    Set      the endpoint's allow-list of function ids
                                             (absent: the endpoint runs any function)
    fx:{task:<task_id>}             Hash     one task: state, ids, timestamps, result or exception
    fx:{fn:<function_id>}:code      String   serialized function code, cached for agents
    fx:{tg:<task_group_id>}:results Stream   completion notices of a task group (task_id, state;
                                             small outcomes inline: service_common.tasks.settle)
    fx:{tg:<task_group_id>}:tasks   List     every task id submitted into the group, in order
    fx:{tg:<task_group_id>}:noticed Set      the group's task ids whose notice was appended
                                             (so a retried settle appends none twice)
    fx:{idem:<user_id>}:<key>       String   JSON of what a batch submit with that
                                             Idempotency-Key answered (or that it is underway)
"""

from __future__ import annotations

from dataclasses import dataclass

AGENT_GROUP = "agents"
"""The consumer group every agent of an endpoint reads the task stream through."""


@dataclass(frozen=True)
class Keys:
    """Builds key names under one prefix."""

    prefix: str = "fx"

    def endpoint_tasks(self, endpoint_id: str) -> str:
        return f"{self.prefix}:{{ep:{endpoint_id}}}:tasks"

    def endpoint_status(self, endpoint_id: str) -> str:
        return f"{self.prefix}:{{ep:{endpoint_id}}}:status"

    def endpoint_cancel(self, endpoint_id: str) -> str:
        return f"{self.prefix}:{{ep:{endpoint_id}}}:cancel"

    def endpoint_cancel_pattern(self) -> str:
        """A PSUBSCRIBE pattern matching every endpoint's cancel channel."""
        prefix = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{prefix}:{{ep:*}}:cancel"

    def endpoint_allowed_functions(self, endpoint_id: str) -> str:
        return f"{self.prefix}:{{ep:{endpoint_id}}}:allowed_functions"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:{{task:{task_id}}}"

    def function_code(self, function_id: str) -> str:
        return f"{self.prefix}:{{fn:{function_id}}}:code"

    def task_group_results(self, task_group_id: str) -> str:
        return f"{self.prefix}:{{tg:{task_group_id}}}:results"

    def task_group_tasks(self, task_group_id: str) -> str:
        return f"{self.prefix}:{{tg:{task_group_id}}}:tasks"

    def task_group_noticed(self, task_group_id: str) -> str:
        return f"{self.prefix}:{{tg:{task_group_id}}}:noticed"

    def amqp_groups(self) -> str:
        """The task groups whose results go to AMQP (a sorted set; see amqp_publisher)."""
        return f"{self.prefix}:amqp:groups"

    def amqp_cursor(self, task_group_id: str) -> str:
        """The last result of the group the AMQP publisher had confirmed by the broker."""
        return f"{self.prefix}:{{tg:{task_group_id}}}:amqp_cursor"

    def amqp_lease(self, task_group_id: str) -> str:
        """Which publisher copy publishes the group now."""
        return f"{self.prefix}:{{tg:{task_group_id}}}:amqp_lease"

    def idempotency(self, user_id: str, key: str) -> str:
        return f"{self.prefix}:{{idem:{user_id}}}:{key}"

    def dashboard_session(self, session_hash: str) -> str:
        """A dashboard sign-in, named by the sha256 of its cookie (web_service.dashboard)."""
        return f"{self.prefix}:dashboard:session:{session_hash}"

    def dashboard_code(self, code_hash: str) -> str:
        """A one-time dashboard sign-in code, named by its sha256."""
        return f"{self.prefix}:dashboard:code:{code_hash}"

    def pattern(self) -> str:
        """A SCAN/KEYS pattern matching every key under this prefix."""
        return f"{self.prefix}:*"
