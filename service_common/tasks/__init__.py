"""The Redis side of serving an endpoint, shared by the gateway (``ws_service.gateway``)
and, during the transition, the endpoint agent's Redis mode.

Modules::

    stream     TaskStream: the endpoint's task stream through the consumer group (reads,
               XAUTOCLAIM, the start script with attempts, lease touch, hand-back, code
               and allow-list lookups)
    settle     Settler: outcomes written and announced, entries acknowledged (two round
               trips per batch)
    leases     LeaseKeeper: renews held entries every interval while their holder lives
    cancels    CancelListener: the cancel channel (one endpoint's, or every endpoint's)
    heartbeat  Status and Heartbeat: the endpoint's status hash that the web service reads
"""
