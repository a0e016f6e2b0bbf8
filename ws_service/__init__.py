"""The fxbroker WebSocket service: pushes each task group's results from a cursor, and is
the endpoint gateway that agents connect to (``/v1/endpoint``).

``async with ResultServer(WsSettings.from_env()) as server: await server.serve_forever()``.

Modules::

    server     the handshake of both routes, subscriptions; the push protocol; the
               same-process push of outcomes the gateway settled
    fanout     one shared blocked read of every subscription's results stream
    gateway    the endpoint gateway: reader, agent sessions, bounded Redis connections
    protocol   frames: parsing client commands, encoding results and errors (pure)
    auth       who is calling and may they read a group, asked of the web service, cached
    settings   WsSettings, from keywords or the environment
"""
