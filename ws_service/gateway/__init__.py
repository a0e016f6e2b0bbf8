"""The endpoint gateway: agents connect to ``/v1/endpoint`` with their endpoint's credential
and are served that endpoint's tasks; Redis stays private to the services.

The protocol is :mod:`service_common.agent_protocol` (its docstring is the specification);
this package is its I/O shell against Redis. Modules::

    hub       Gateway: one per ws_service copy; its Redis connections (bounded, see there),
              the reader, the cancel subscription, the live sessions, drain
    reader    Reader: every connected agent's reads, multiplexed (claims, reads, one wait)
    session   AgentSession: one agent's connection; windows, code once, leases, settles,
              hand-backs, status, adoption of a reconnecting agent's tasks

The handshake (credential -> endpoint, asked of the web service) is in
:mod:`ws_service.server`, beside the results route.
"""

from ws_service.gateway.hub import Gateway
from ws_service.gateway.session import AgentSession, Settlement

__all__ = ["AgentSession", "Gateway", "Settlement"]
