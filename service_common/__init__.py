"""What the three services share: configuration, errors, the Redis client, tokens, a cache.

Imported by ``web_service``, ``ws_service``, ``endpoint_agent`` and the composition root
``fxbroker``; never by the SDK, and it imports none of them (import-linter contracts).

Modules::

    errors         ServiceError and SettingsError: the server-side exception tree
    settings       settings_from_env, field metadata naming each variable, RedisSettings
                   (the fields every service has) and the checks every service applies
    redis_client   connect_redis: the one way a service opens Redis (a bounded, blocking
                   pool); redis_unavailable: which errors mean Redis is away; unblock:
                   waking a blocked read (CLIENT UNBLOCK)
    lua            Lua scripts called by SHA, reloaded once on NOSCRIPT; execute_pipeline
    stream_watch   one blocked XREAD per process serving many waiters (the web service's
                   long polls)
    retry          Backoff, Outage and retry: the one policy for riding out an outage
    tokens         the bearer token of an Authorization header, and its hash
    tls            the certificate and key the web and ws services serve https/wss with
    cache          a bounded, expiring, least-recently-used in-process cache
    agent_protocol the agent <-> gateway protocol: frames, codec, the gateway's ledger and
                   the agent's outbox (sans-I/O)
    tasks          the Redis side of serving an endpoint, for the gateway: task stream,
                   start and settle, leases, cancels, heartbeat
"""
