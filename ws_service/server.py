"""The WebSocket result service: stateless fan-out of task-group results from Redis.

The push protocol
=================

**Connect** to ``ws://host:port/v1/results`` with ``Authorization: Bearer <token>``. The
token is checked during the handshake (asked of the web service's ``GET /v1/whoami``, cached
for ``auth_cache_s``): a missing or bad token is answered HTTP 401 and no WebSocket opens; an
unreachable web service 503 (retry). Any other path is 404.

**Subscribe** to a task group from a cursor; frames are JSON text::

    client -> {"type": "subscribe", "task_group_id": "<gid>", "cursor": "0"}
    server -> {"type": "subscribed", "task_group_id": "<gid>", "cursor": "0"}
    server -> {"type": "results", "task_group_id": "<gid>", "cursor": "<last>",
               "results": [{"task_id", "state", "cursor", "result"?, "exception"?,
                            "stdout"?, "stderr"?}, ...]}
    client -> {"type": "unsubscribe", "task_group_id": "<gid>"}
    server -> {"type": "error", "code": "...", "message": "...", "task_group_id"?: "<gid>"}

``"0"`` replays the group from its first result. A group that is not the caller's is refused
with an ``error`` frame (``NOT_FOUND``); the connection stays open. Subscribing again to a
group replaces the subscription (new cursor).

**Results frames carry their cursor and batch.** Every completion of the group after the
cursor is pushed, in completion order; each item carries its own ``cursor`` and the frame the
cursor of its last item. One ``XREAD`` reads up to ``batch_max`` notices and they leave as
one frame, split only where a frame would pass ``max_frame_bytes``.

**No compression unless asked.** permessage-deflate is off (``compression``,
``FXBROKER_WS_COMPRESSION=deflate`` turns it on): results are mostly base64 of pickles that
deflate barely shrinks, and compressing costs CPU on both ends of every frame.

**Keepalive.** The server pings every ``ping_interval_s`` and closes a connection whose pong
does not come within ``ping_timeout_s``; clients answer pings (the websockets library does)
and may ping too.

**Frame size.** Frames the server sends are at most ``max_frame_bytes`` (64 MiB by default),
above the web service's 10 MiB request limit, so the largest result always fits one frame;
client frames are commands, limited to :data:`CLIENT_FRAME_BYTES_MAX`.

**Delivery.** At least once per subscription: a client that reconnects and resubscribes from
the last cursor it saw misses nothing, and may see again a frame that was in flight when the
connection dropped; the SDK drops repeats by task id, which makes it exactly once per task
id for the user. A Redis outage (a restart, a failover) pauses every subscription, which
waits it out with the shared backoff (:mod:`service_common.retry`) and resumes from its own
cursor: nothing is lost or repeated by it, no connection is closed, and the outage is logged
once. The web service being away answers the handshake 503 (``Retry-After``) and a
subscribe ``UNAVAILABLE``; clients retry both.

**Same process, same push.** An outcome that this copy's gateway settles is pushed at once
to this copy's subscribers of its task group, before their own stream read gets to it; the
stream read then skips it (tracked per subscription), so it arrives once. Such an item
carries the subscription's cursor so far, not its own: resubscribing from it still misses
nothing that other copies settled meanwhile.

**The endpoint gateway** answers ``/v1/endpoint`` (an endpoint credential, not a user
token): see :mod:`ws_service.gateway` and its protocol, :mod:`service_common.agent_protocol`.

Nothing about a client is kept anywhere but in its connection, so any number of copies of
the service can run side by side and a restart loses nothing. The copy's Redis connections
carry the name ``client_name`` and are bounded whatever the number of clients and agents:
the results side holds at most :data:`ws_service.fanout.REDIS_CONNECTIONS` (one shared
blocked read for every subscription), the gateway at most ``gateway_redis_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import httpx
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sdk import wire
from sdk.errors import APIError
from sdk.keys import Keys
from sdk.messages import ResultItem, stored
from sdk.wire import RESULTS_PATH
from service_common import tls
from service_common.agent_protocol import AGENT_PATH
from service_common.redis_client import RedisClient, connect_redis
from service_common.retry import Outage
from service_common.tokens import bearer_token
from ws_service import protocol
from ws_service.auth import Authenticator, Caller, EndpointSession, WebUnavailable
from ws_service.fanout import POOL_CONNECTIONS, ResultReader, Subscription
from ws_service.gateway import Gateway, Settlement
from ws_service.settings import WsSettings

logger = logging.getLogger(__name__)

"""The one WebSocket route."""
CLIENT_FRAME_BYTES_MAX = 64 * 1024
"""Client frames are small commands; a larger one closes the connection (code 1009)."""
(_USER_ID,) = stored("user_id")

_SUBSCRIBE_ERROR_CODES = {
    401: wire.UNAUTHORIZED,
    403: wire.NOT_FOUND,
    404: wire.NOT_FOUND,
}
"""Error frame code for each status of the web service's answer about a task group."""


class _Connection(ServerConnection):
    """A server connection that remembers who authenticated it during the handshake."""

    caller: Caller | None = None
    endpoint: EndpointSession | None = None


class ResultServer:
    """The result service, opened and closed with ``async with``::

        async with ResultServer(settings) as server:
            print(server.port)
            await server.serve_forever()

    Leaving the block closes every connection (code 1001), cancels every subscription and
    closes the Redis and HTTP clients it opened.

    Delivery contract, per subscription: every completion notice of the task group after the
    subscription's cursor is pushed at least once, in completion order (the stream's order),
    each as a ``ResultItem`` carrying its own ``cursor``. A client that reconnects and
    resubscribes from the last cursor it saw misses nothing; it may receive again results it
    had already received (a frame in flight when the connection dropped), so the SDK drops
    duplicates by task id. A Redis failure delays results (retried with backoff) but loses
    none and never closes a connection.
    """

    def __init__(self, settings: WsSettings, *, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self._sock = sock
        """A listening socket to serve on instead of binding ``settings.host:port`` (a caller
        that must know the port before the server starts binds it itself)."""
        self.keys = Keys(settings.key_prefix)
        self._redis: RedisClient | None = None
        self._reader: ResultReader | None = None
        self._reading: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._auth: Authenticator | None = None
        self._server: Server | None = None
        self.redis_outage = Outage("Redis", logger=logger)
        """Redis outages of this process, shared by every subscription: one log line each."""
        self.web_outage = Outage("the web service", logger=logger)
        """Outages of the web service, this service's peer for tokens and task groups."""
        self._gateway: Gateway | None = None
        self.results_connections = 0
        """Results connections accepted so far (clients keep one open across calls)."""
        self._local: dict[str, set[Subscription]] = {}
        """This process's subscriptions by task group, for the same-process push."""

    @property
    def gateway(self) -> Gateway:
        """The endpoint gateway of this copy (route ``/v1/endpoint``)."""
        if self._gateway is None:
            raise RuntimeError("the server is not open; use `async with ResultServer(...)`")
        return self._gateway

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the server is not open; use `async with ResultServer(...)`")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        settings = self.settings
        # Loaded first: a bad certificate or key ends the start before anything opens.
        ssl_context = (
            tls.server_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        )
        self._redis = connect_redis(
            settings.redis_url, client_name=settings.client_name, max_connections=POOL_CONNECTIONS
        )
        self._reader = ResultReader(
            self._redis,
            self.keys,
            block_ms=settings.block_ms,
            batch_max=settings.batch_max,
            max_frame_bytes=settings.max_frame_bytes,
            outage=self.redis_outage,
        )
        self._reading = asyncio.create_task(self._reader.run(), name="results-reader")
        self._http = httpx.AsyncClient(timeout=settings.auth_timeout_s)
        self._auth = Authenticator(
            self._http, settings.web_url, cache_s=settings.auth_cache_s,
            group_owner=self._group_owner,
        )  # fmt: skip
        try:
            self._gateway = await Gateway(
                settings, redis_outage=self.redis_outage, on_settled=self._push_settled
            ).__aenter__()
            self._server = await serve(
                self._handle,
                None if self._sock else settings.host,
                None if self._sock else settings.port,
                sock=self._sock,
                process_request=self._process_request,
                create_connection=_Connection,
                ping_interval=settings.ping_interval_s,
                ping_timeout=settings.ping_timeout_s,
                max_size=max(CLIENT_FRAME_BYTES_MAX, settings.max_frame_bytes),
                compression=None if settings.compression == "none" else "deflate",
                ssl=ssl_context,
            )
        except BaseException:
            await self._close_clients()
            raise
        scheme = "wss" if ssl_context is not None else "ws"
        logger.info("ws_service listening on %s://%s:%d", scheme, settings.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gateway is not None:
            await self._gateway.drain(timeout_s=self.settings.drain_timeout_s)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._close_clients()

    async def serve_forever(self) -> None:
        """Serve until cancelled (or until the ``async with`` block is left elsewhere)."""
        if self._server is None:
            raise RuntimeError("the server is not open; use `async with ResultServer(...)`")
        await self._server.serve_forever()

    async def _close_clients(self) -> None:
        if self._gateway is not None:
            await self._gateway.__aexit__(None, None, None)
            self._gateway = None
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
            self._reading = None
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Handshake: ``/v1/results`` with a user's token, or ``/v1/endpoint`` with an
        endpoint credential; anything else is refused before a WebSocket opens."""
        assert self._auth is not None and isinstance(connection, _Connection)
        path = request.path.split("?", 1)[0]
        if path not in (RESULTS_PATH, AGENT_PATH):
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no route; use {RESULTS_PATH}\n")
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing bearer token\n")
        try:
            if path == AGENT_PATH:
                endpoint = await self._auth.authenticate_endpoint(token)
                self.web_outage.recovered()
                if endpoint is None:
                    return connection.respond(
                        http.HTTPStatus.UNAUTHORIZED, "invalid endpoint credential\n"
                    )
                connection.endpoint = endpoint
                return None
            # Client frames on the results route are small commands.
            connection.protocol.max_message_size = CLIENT_FRAME_BYTES_MAX
            caller = await self._auth.authenticate(token)
        except (WebUnavailable, APIError) as exc:
            self.web_outage.failed(exc)
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "cannot check the token now; retry\n"
            )
            response.headers["Retry-After"] = "1"
            return response
        self.web_outage.recovered()
        if caller is None:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "invalid token\n")
        connection.caller = caller
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        """One connection: an agent's (the gateway serves it), or a client's: read commands
        until it closes, then cancel its subscriptions."""
        assert isinstance(connection, _Connection)
        if connection.endpoint is not None:
            await self.gateway.serve(
                connection, connection.endpoint.endpoint_id, connection.endpoint.name
            )
            return
        assert connection.caller is not None
        caller = connection.caller
        self.results_connections += 1
        subscriptions: dict[str, Subscription] = {}
        try:
            async for message in connection:
                command = protocol.parse_frame(message)
                if isinstance(command, protocol.Subscribe):
                    await self._subscribe(connection, caller, subscriptions, command)
                elif isinstance(command, protocol.Unsubscribe):
                    self._drop(subscriptions.pop(command.task_group_id, None))
                else:
                    await connection.send(protocol.encode(command))
        except ConnectionClosed:
            pass
        finally:
            for sub in subscriptions.values():
                self._drop(sub)

    async def _subscribe(
        self,
        connection: ServerConnection,
        caller: Caller,
        subscriptions: dict[str, Subscription],
        command: protocol.Subscribe,
    ) -> None:
        """Check the group is the caller's, answer ``subscribed``, start pushing.

        Subscribing again to a group replaces the earlier subscription (new cursor)."""
        assert self._auth is not None
        gid = command.task_group_id
        if gid not in subscriptions and len(subscriptions) >= self.settings.max_subscriptions:
            await connection.send(
                protocol.encode(
                    protocol.error_frame(
                        wire.TOO_MANY_SUBSCRIPTIONS,
                        f"at most {self.settings.max_subscriptions} subscriptions per connection",
                        gid,
                    )
                )
            )
            return
        try:
            await self._auth.check_task_group(caller, gid)
        except APIError as exc:
            code = _SUBSCRIBE_ERROR_CODES.get(exc.status, wire.UNAVAILABLE)
            await connection.send(protocol.encode(protocol.error_frame(code, exc.message, gid)))
            return
        except WebUnavailable as exc:
            self.web_outage.failed(exc)
            await connection.send(
                protocol.encode(
                    protocol.error_frame(
                        wire.UNAVAILABLE, "cannot check the task group now; retry", gid
                    )
                )
            )
            return
        self._drop(subscriptions.pop(gid, None))
        await connection.send(protocol.encode(protocol.subscribed_frame(command)))
        sub = Subscription(connection, gid, command.cursor, self.keys.task_group_results(gid))
        subscriptions[gid] = sub
        self._local.setdefault(gid, set()).add(sub)
        self.reader.add(sub)

    async def _group_owner(self, task_group_id: str) -> str | None:
        """The user whose tasks the group's list in Redis holds (its first task's submitter),
        or None when Redis holds neither (expired, never submitted) or cannot answer now."""
        redis = self._redis
        if redis is None:
            return None
        try:
            first = await redis.lindex(self.keys.task_group_tasks(task_group_id), 0)
            if not isinstance(first, str):
                return None
            (owner,) = await redis.hmget(self.keys.task(first), _USER_ID)
        except RedisError:
            return None
        return owner if isinstance(owner, str) else None

    @property
    def reader(self) -> ResultReader:
        """The one reader of every subscription's results stream (:mod:`ws_service.fanout`)."""
        if self._reader is None:
            raise RuntimeError("the server is not open; use `async with ResultServer(...)`")
        return self._reader

    def _drop(self, sub: Subscription | None) -> None:
        """End ``sub``: no more reads or pushes for it."""
        if sub is None:
            return
        if self._reader is not None:
            self._reader.remove(sub)
        else:
            sub.cancel()
        group = self._local.get(sub.task_group_id)
        if group is not None:
            group.discard(sub)
            if not group:
                del self._local[sub.task_group_id]

    def _push_settled(self, settlements: Sequence[Settlement]) -> None:
        """The same-process push: outcomes this copy's gateway just settled go at once to
        this copy's subscribers of their task group, without waiting for their stream read
        (which then skips them). Other copies get them through the stream as ever."""
        by_group: dict[str, list[Settlement]] = {}
        for settled in settlements:
            if settled.task_group_id in self._local:
                by_group.setdefault(settled.task_group_id, []).append(settled)
        for group, settled_here in by_group.items():
            for sub in self._local.get(group, ()):
                offered = [(s.notice_id, _item(s)) for s in settled_here]  # an item per sub
                sub.offer(offered, max_frame_bytes=self.settings.max_frame_bytes)


def _item(settled: Settlement) -> ResultItem:
    """The result item a settled outcome is pushed as (its cursor is the subscription's)."""
    o = settled.outcome
    item: ResultItem = {"task_id": o.task_id, "state": str(o.state), "cursor": ""}
    if o.result is not None:
        item["result"] = o.result
    if o.exception is not None:
        item["exception"] = o.exception
    if o.stdout:
        item["stdout"] = o.stdout
    if o.stderr:
        item["stderr"] = o.stderr
    return item


async def run_ws(settings: WsSettings, *, handle_signals: bool = True) -> None:
    """Run the result service until cancelled, or until SIGINT/SIGTERM when
    ``handle_signals`` is true; then close every connection and return."""
    async with ResultServer(settings) as server:
        if not handle_signals:
            await server.serve_forever()
            return
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            serving = asyncio.create_task(server.serve_forever())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (serving, stopping):
                task.cancel()
            await asyncio.gather(serving, stopping, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
