"""The fxbroker WebSocket service: pushes each task group's results from a cursor.

``async with ResultServer(WsSettings.from_env()) as server: await server.serve_forever()``.

Modules::

    server     the handshake, subscriptions and their Redis reads; the push protocol
    protocol   frames: parsing client commands, encoding results and errors (pure)
    auth       who is calling and may they read a group, asked of the web service, cached
    settings   WsSettings, from keywords or the environment
"""
