"""What the three services share: configuration, errors, the Redis client, tokens, a cache.

Imported by ``web_service``, ``ws_service``, ``endpoint_agent`` and the composition root
``fxbroker``; never by the SDK, and it imports none of them (import-linter contracts).

Modules: :mod:`.errors` (the server-side exception tree), :mod:`.settings` (settings
dataclasses built from the environment by their field metadata, and the checks every
service applies alike), :mod:`.redis_client` (the one way a service opens Redis),
:mod:`.tokens` (the bearer token of an ``Authorization`` header), :mod:`.cache` (a bounded,
expiring, least-recently-used in-process cache).
"""
