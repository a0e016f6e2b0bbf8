"""The dev stack's listening sockets: bound before either service starts, and the
connections they accept get what asyncio gives its own servers' (Nagle off)."""

from __future__ import annotations

import asyncio
import socket

from fxbroker.embedded import listening_socket


async def test_accepted_connections_have_nagle_off() -> None:
    with listening_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = writer.get_extra_info("socket")
            accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert await asyncio.wait_for(accepted, 10) != 0
            finally:
                writer.close()
                await writer.wait_closed()
