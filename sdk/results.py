"""``ResultListener``: results of one task group, pushed over the WebSocket, resolved by task id.

The listener is shared by :class:`~sdk.asyncio_client.AsyncClient` and
:class:`~sdk.executor.Executor`. Its owner submits tasks, then calls :meth:`ResultListener.watch`
with each task id and a callback; the listener calls that callback exactly once, with the
task's :class:`~sdk._base.TaskOutcome` (its value, or the remote exception, and its output).

Delivery contract:

* The connection opens when the first task is watched, subscribes to the task group from the
  last cursor seen (``"0"`` at first: the whole group is replayed), and stays open while a
  watched task is outstanding or a submit is in flight, and for ``linger_s`` after (the
  client's ``ws_linger_s``), so back-to-back calls reuse it: no handshake, no subscribe, and
  the service keeps pushing from where it was. A watch after the linger reopens it from the
  cursor.
* On any disconnect (network error, ws service restart, a 429/5xx answer to the handshake,
  an ``UNAVAILABLE`` or ``INTERNAL`` error frame) it reconnects with capped, jittered
  exponential backoff (:mod:`sdk.retry`) and resubscribes from the last cursor, so nothing
  completed meanwhile is missed.
* ``ws_url`` may name several copies of the ws service, comma-separated: the listener
  connects to the first, and after a failed connect or a dropped connection tries the next,
  round robin, so a client whose copy died resubscribes on another within one backoff step
  (cursors are the results stream's, the same on every copy).
* The ws service delivers at least once; the listener drops repeats by task id, so each
  callback runs once.
* A result can arrive before the submit that made it has answered (the task ran fast). While
  a submit is in flight (:meth:`ResultListener.submitting`) results of tasks nobody watches
  yet are kept, and handed over when the task id is watched; otherwise they are dropped.
* What cannot be recovered ends every outstanding task with an error instead of waiting for
  ever: a refused token or subscription (:class:`~sdk.errors.APIError`), or a service that
  has not subscribed a connection for the client's ``retry_for_s`` (an outage begins at the
  first failure after the last subscription): :class:`~sdk.errors.ConnectionFailed` naming
  the URL and how long it was tried; a ``wss://`` certificate that fails verification, at
  once (:class:`~sdk.errors.CertificateNotTrusted`: waiting would not make it trusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from sdk import _base, tls, wire
from sdk._base import TaskOutcome
from sdk.errors import APIError, CertificateNotTrusted, ConnectionFailed
from sdk.messages import ResultItem
from sdk.retry import Outage, Retry, parse_retry_after
from sdk.states import TERMINAL_STATES

log = logging.getLogger(__name__)

Resolve = Callable[[TaskOutcome], None]
"""Called once per watched task with how it ended."""

_TRANSIENT_REFUSALS = frozenset({wire.UNAVAILABLE, wire.INTERNAL})
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
OPEN_TIMEOUT_S = 10.0
"""Timeout of one WebSocket opening handshake."""


class _Transient(Exception):
    """The connection must be dropped and opened again."""


class ResultListener:
    """Resolves watched tasks of one task group from the ws service's ``results`` frames."""

    def __init__(
        self,
        *,
        ws_url: Callable[[], Awaitable[str]],
        token: str,
        task_group_id: str | None = None,
        cursor: str = wire.START_CURSOR,
        retry: Retry | None = None,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        compression: str = "none",
        linger_s: float = 0.0,
    ) -> None:
        """``ws_url`` gives the ws service's base URL, or several copies' comma-separated
        (awaited when a connection opens).
        ``task_group_id`` may be set later, but before the first :meth:`watch`. ``retry``
        says how reconnects back off and how long an outage is waited out. ``ssl_context``
        verifies a ``wss://`` service (``None``: the default one; :mod:`sdk.tls`).
        ``compression``: ``none`` offers no permessage-deflate, ``deflate`` offers it.
        ``linger_s``: how long the connection stays open with nothing outstanding."""
        self.task_group_id = task_group_id
        self._ws_url = ws_url
        self._token = token
        self._cursor = cursor
        self._outage = Outage(retry or Retry(), service="the ws service")
        self._open_timeout_s = open_timeout_s
        self._ssl = ssl_context
        self._compression = None if compression == "none" else "deflate"
        self._linger_s = linger_s
        self._lingered_out = False  # the last connection was closed by the linger, not lost
        self._opened = 0
        self._turn = 0  # which of the ws copies the next connection tries
        self._waiting: dict[str, Resolve] = {}
        self._early: dict[str, TaskOutcome] = {}
        self._submitting = 0
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._closer: asyncio.Task[None] | None = None
        self._linger: asyncio.Task[None] | None = None
        self._closed = False
        self._subscribed = False
        self._subscriptions = 0

    @property
    def cursor(self) -> str:
        """The cursor of the last result read; a resubscription starts after it."""
        return self._cursor

    @property
    def outstanding(self) -> int:
        """How many watched tasks have no result yet."""
        return len(self._waiting)

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def connection(self) -> ClientConnection | None:
        """The open WebSocket, if any (to inspect what was negotiated)."""
        return self._ws

    @property
    def connections(self) -> int:
        """How many connections this listener opened so far."""
        return self._opened

    async def wait_closed(self) -> None:
        """Return once the listener holds no connection and is not about to open one
        (nothing outstanding and the linger over)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    @property
    def subscriptions(self) -> int:
        """How many times a connection subscribed (the first, then one per reconnect)."""
        return self._subscriptions

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Mark a submit in flight: until it ends, unclaimed results are kept for :meth:`watch`."""
        self._submitting += 1
        try:
            yield
        finally:
            self._submitting -= 1
            if not self._submitting:
                self._early.clear()
                self._close_if_idle()

    def watch(self, task_id: str, resolve: Resolve) -> None:
        """Call ``resolve`` once with the task's outcome; opens the connection if needed."""
        if self._closed:
            raise RuntimeError("the result listener is closed")
        if self.task_group_id is None:
            raise RuntimeError("watch() needs the task group id set first")
        early = self._early.pop(task_id, None)
        if early is not None:
            resolve(early)
            return
        self._waiting[task_id] = resolve
        self._keep_open()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"fxbroker-results-{self.task_group_id}"
            )

    def unwatch(self, task_id: str) -> None:
        """Stop waiting for ``task_id`` (its callback will not run); the connection closes
        when nothing else is outstanding."""
        if self._waiting.pop(task_id, None) is not None:
            self._close_if_idle()

    async def aclose(self) -> None:
        """Close the connection (with the closing handshake); outstanding tasks fail with
        :class:`ConnectionFailed`."""
        self._closed = True
        self._fail_all(ConnectionFailed("ws service", "the client was closed first"))
        ws = self._ws
        if ws is not None:
            await ws.close()
        for task in (self._task, self._closer, self._linger):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            try:
                urls = _base.results_urls(await self._ws_url())
                url = urls[self._turn % len(urls)]
            except Exception as exc:
                self._fail_all(exc)
                return
            self._outage.service = url
            self._subscribed = False
            retry_after_s: float | None = None
            try:
                await self._connection(url)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403, 404):
                    code = "UNAUTHORIZED" if status in (401, 403) else "NOT_FOUND"
                    self._fail_all(APIError(status, code, f"{url} refused the connection"))
                    return
                reason = f"HTTP {status}"
                retry_after_s = parse_retry_after(exc.response.headers.get("Retry-After"))
            except APIError as exc:
                self._fail_all(exc)
                return
            except (OSError, TimeoutError, WebSocketException, ValueError, _Transient) as exc:
                refused = tls.certificate_error(exc)
                if refused is not None:
                    self._fail_all(CertificateNotTrusted(url, tls.untrusted(refused)))
                    return
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "the connection closed"
                if self._lingered_out:  # closed by us after the linger, not lost
                    self._lingered_out = False
                    continue
            if not self._waiting:
                return
            self._turn += 1  # the next copy, if there are several
            now = loop.time()
            delay = self._outage.failed(now, reason, retry_after_s=retry_after_s)
            if delay is None:
                self._fail_all(ConnectionFailed(url, self._outage.describe(reason, now)))
                return
            log.debug("results of %s: %s; reconnecting in %.2fs", self.task_group_id, reason, delay)
            await asyncio.sleep(delay)

    async def _connection(self, url: str) -> None:
        """One connection, until it closes or nothing is outstanding."""
        try:
            await self._converse(url)
        finally:
            self._ws = None  # only once the closing handshake is over (see aclose)

    async def _converse(self, url: str) -> None:
        async with connect(
            url,
            additional_headers=_base.auth_headers(self._token),
            open_timeout=self._open_timeout_s,
            max_size=None,
            compression=self._compression,
            **tls.connect_options(url, self._ssl),
        ) as ws:
            self._ws = ws
            self._opened += 1
            self._lingered_out = False
            assert self.task_group_id is not None
            await ws.send(_base.subscribe_frame(self.task_group_id, self._cursor))
            async for message in ws:
                frame = _base.parse_frame(message)
                if isinstance(frame, _base.Subscribed):
                    self._subscribed = True
                    self._subscriptions += 1
                    self._outage.ended(asyncio.get_running_loop().time())
                elif isinstance(frame, _base.Results):
                    if frame.task_group_id == self.task_group_id:
                        self._deliver(frame.items)
                else:
                    self._refused(frame)
                self._close_if_idle()

    def _refused(self, frame: _base.Refused) -> None:
        if frame.task_group_id not in (None, self.task_group_id):
            return
        if frame.code in _TRANSIENT_REFUSALS:
            raise _Transient(f"{frame.code}: {frame.message}")
        raise APIError(_base.error_status(frame.code), frame.code, frame.message)

    def _deliver(self, items: list[ResultItem]) -> None:
        for item in items:
            self._cursor = item["cursor"]
            if item["state"] not in _TERMINAL:
                continue
            task_id = item["task_id"]
            resolve = self._waiting.pop(task_id, None)
            if resolve is not None:
                resolve(_base.item_outcome(item))
            elif self._submitting and task_id not in self._early:
                self._early[task_id] = _base.item_outcome(item)

    def _idle(self) -> bool:
        return not self._waiting and not self._submitting

    def _close_if_idle(self) -> None:
        """Nothing outstanding: close the connection once the linger is over."""
        ws = self._ws
        if ws is None or not self._idle():
            return
        if self._linger is not None or (self._closer is not None and not self._closer.done()):
            return
        self._linger = asyncio.get_running_loop().create_task(self._close_after(ws))

    def _keep_open(self) -> None:
        """Something is outstanding again: a pending close after the linger is called off."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    async def _close_after(self, ws: ClientConnection) -> None:
        if self._linger_s > 0:
            await asyncio.sleep(self._linger_s)
        self._linger = None
        if self._ws is not ws or not self._idle():
            return
        self._lingered_out = True
        self._closer = asyncio.get_running_loop().create_task(ws.close())

    def _fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for task_id, resolve in waiting.items():
            resolve(TaskOutcome(task_id, "", None, error))
