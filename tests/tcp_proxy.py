"""A loopback TCP proxy a test can cut, to make a shared server (PostgreSQL) unreachable for
one client without touching the server::

    async with TcpProxy("127.0.0.1", 5432) as proxy:      # proxy.port forwards to :5432
        ...
        await proxy.cut()       # every connection through it is dropped, new ones refused
        await proxy.restore()   # accepting again, on the same port
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from fxbroker.embedded import free_port

HOST = "127.0.0.1"
CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port(HOST)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        """Accept connections (again) on :attr:`port`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, HOST, self.port)

    async def cut(self) -> None:
        """Refuse new connections and drop every open one, as a dead server would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()
            with contextlib.suppress(OSError):
                await sink.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        await self.restore()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cut()
