"""``AsyncClient``: the asyncio SDK. ``await run(...)`` returns the function's result.

::

    from fxbroker import AsyncClient

    async with AsyncClient() as fx:
        fid = await fx.register_function(double)
        values = await asyncio.gather(*(fx.run(i, function_id=fid) for i in range(1000)))
        handles = [fx.submit(i, function_id=fid) for i in range(10)]
        async for handle in fx.as_completed(handles):
            print(handle.task_id, handle.result())

Runs made close together leave as one batch request (:mod:`sdk.batching`); their results
come back over one WebSocket (:mod:`sdk.results`), each exactly once, reconnecting from the
last cursor after any disconnect. The WebSocket stays open for ``ws_linger_s`` after the
last result awaited, so sequential ``await fx.run(...)`` calls pay no handshake.

The other methods are the coroutine twins of :class:`~sdk.client.Client`'s, built on the
same :mod:`sdk._base` (the same requests, the same loops over 1,000 ids at a time). The
one difference in meaning is ``run``: ``await AsyncClient.run(...)`` returns the function's
result (funcX's async API), ``Client.run`` returns a task id at once. What only pushed
results allow (``submit``, ``as_completed``, ``watch_task``) has no twin in ``Client``.

Everything runs in the loop that calls it, so the client works inside an already-running
loop (a Jupyter notebook: ``await fx.run(...)`` in a cell). Use one client per event loop.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from sdk import _base, tls
from sdk._base import Batch, FunctionKey, TaskOutcome, function_key
from sdk.batching import Submission, SubmitQueue
from sdk.config import ClientConfig
from sdk.errors import APIError
from sdk.handles import TaskHandle, as_completed
from sdk.messages import SubmitResponse, TaskInfo, TaskSpec
from sdk.progress import Progress
from sdk.results import Resolve, ResultListener
from sdk.retry import Outage, Retry

R = TypeVar("R")


class _Body(aiohttp.BytesPayload):
    """A request body already in memory, sent as it is. aiohttp's own payload for bytes
    warns (a ``ResourceWarning``) above 1 MiB that it "might lock the event loop"; a
    transport write only buffers, and a batch of large arguments is a body of many MiB."""

    def __init__(self, value: bytes) -> None:
        aiohttp.payload.Payload.__init__(self, value, content_type="application/json")
        self._size = len(value)


class _Answer(NamedTuple):
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    content: bytes


def _resolver(submission: Submission) -> Resolve:
    def resolve(outcome: TaskOutcome) -> None:
        submission.outcome = outcome
        future = submission.future
        if future.done():  # the caller stopped waiting
            return
        if outcome.error is None:
            future.set_result(outcome.value)
        else:
            future.set_exception(outcome.error)

    return resolve


class AsyncClient:
    """An asyncio client of the web service, with results pushed over the WebSocket.

    Every task the client submits goes into one task group (``task_group_id``, made by the
    first submit unless given), which is what its result listener subscribes to."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        ws_url: str | None = None,
        endpoint_id: str | None = None,
        batch_size: int = 1000,
        batch_interval_s: float = 0.0,
        task_group_id: str | None = None,
        retry_for_s: float | None = None,
        ca_file: str | None = None,
        ws_linger_s: float | None = None,
    ) -> None:
        """Without ``url``/``token`` the service is found as :mod:`sdk.config` describes.
        ``batch_size`` caps the tasks of one submit request made by :meth:`run` and
        :meth:`submit`; ``batch_interval_s`` makes the queue wait that long after each request
        for more tasks (see :mod:`sdk.batching`). ``retry_for_s`` bounds how long an outage
        of the web service, and of the WebSocket service while results are awaited, is
        waited out, and ``ca_file`` which certificate authorities the ``https://`` and
        ``wss://`` services are checked against, as for :class:`~sdk.client.Client`.
        ``ws_linger_s`` (default ``FXBROKER_WS_LINGER_S``, else 5) is how long the result
        WebSocket stays open once nothing is awaited, so back-to-back runs reuse it."""
        self.config = ClientConfig.from_env(
            url=url,
            token=token,
            ws_url=ws_url,
            endpoint_id=endpoint_id,
            retry_for_s=retry_for_s,
            ca_file=ca_file,
            ws_linger_s=ws_linger_s,
        )
        self.retry = Retry(retry_for_s=self.config.retry_for_s)
        """The retry policy of this client's requests and result listener (:mod:`sdk.retry`)."""
        self._outage = Outage(self.retry, service=self.config.url)
        self.task_group_id = task_group_id
        self._ws_url = self.config.ws_url
        self._functions: dict[FunctionKey, asyncio.Task[str]] = {}
        self._group_lock = asyncio.Lock()
        self._on_close: list[Callable[[], None]] = []
        self._ssl = tls.client_context(self.config.ca_file)
        self._timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None
        self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = (None, None)
        """Made on the first request, in the loop that sends it (see :meth:`_request`)."""
        self.results = ResultListener(
            ws_url=self.get_ws_url,
            token=self.config.token,
            task_group_id=task_group_id,
            retry=self.retry,
            ssl_context=self._ssl,
            compression=self.config.ws_compression,
            linger_s=self.config.ws_linger_s,
        )
        self._queue = SubmitQueue(
            self._send_batch, batch_size=batch_size, batch_interval_s=batch_interval_s
        )

    # -- plumbing ------------------------------------------------------------------------

    async def _request(self, request: _base.Request) -> _Answer:
        """One try of ``request``: its status, headers and body.

        aiohttp, not httpx: a request costs the client about a fourth of the CPU (httpcore's
        per-request anyio machinery was half of an AsyncClient's CPU per round trip in the
        profiles). Its session is made here, in the loop that uses it. A long poll's read may
        last its ``wait_s`` beyond the timeout."""
        if self._http is None:
            # aiohttp's own default context is made at its import, before a program may set
            # SSL_CERT_FILE; one made now reads it (sdk.tls, rule 2).
            https = self.config.url.startswith("https:")
            context = self._ssl or (ssl.create_default_context() if https else True)
            # HTTPS_PROXY and the like (NO_PROXY too), as the Client honours them, looked up
            # once: aiohttp's trust_env looks up the proxy and ~/.netrc in a thread on every
            # request (two thread hops on a round trip's path).
            self._proxy = _env_proxy(URL(self.config.url))
            self._http = aiohttp.ClientSession(
                headers=_base.auth_headers(self.config.token),
                connector=aiohttp.TCPConnector(ssl=context),
            )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._timeout_s,
            sock_read=self._timeout_s + (request.wait_s or 0.0),
        )
        body = request.body()
        async with self._http.request(
            request.method,
            URL(self.config.url.rstrip("/") + request.path, encoded=True),
            data=None if body is None else _Body(body),
            headers=request.headers(),
            timeout=timeout,
            proxy=self._proxy[0],
            proxy_auth=self._proxy[1],
        ) as response:
            return _Answer(response.status, response.headers.copy(), await response.read())

    async def _send(self, request: _base.Request) -> Any:
        """Send ``request`` until it is answered (see :class:`~sdk._base.Exchange`)."""
        loop = asyncio.get_running_loop()
        exchange = _base.Exchange(request, self._outage, url=self.config.url)
        while True:
            try:
                answer = await self._request(request)
            except (aiohttp.ClientError, TimeoutError) as exc:
                delay = exchange.after_error(exc, loop.time())
                if delay is None:
                    raise exchange.unreachable(loop.time()) from exc
            else:
                retry_after = answer.headers.get("retry-after")
                delay = exchange.after_answer(answer.status, retry_after, loop.time())
                if delay is None:
                    return exchange.result(
                        answer.status,
                        answer.content,
                        request_id=answer.headers.get("x-request-id", ""),
                        now=loop.time(),
                    )
            await asyncio.sleep(delay)

    async def _send_all(self, calls: _base.Calls[R]) -> R:
        return calls.merge([await self._send(request) for request in calls.requests])

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the client closes, before its connections do."""
        self._on_close.append(callback)

    async def aclose(self) -> None:
        """Run the :meth:`on_close` callbacks (newest first), then stop submitting and
        listening; runs still waiting end with an error."""
        callbacks, self._on_close = self._on_close, []
        for callback in reversed(callbacks):
            callback()
        await self._queue.aclose()
        await self.results.aclose()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def default_endpoint_id(self) -> str | None:
        return self.config.endpoint_id

    async def get_ws_url(self) -> str:
        """The WebSocket service's base URL; asked of the web service when not configured."""
        if self._ws_url is None:
            self._ws_url = _base.parse_ws_url(await self._send(_base.info()))
        return self._ws_url

    # -- calls -----------------------------------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_base.whoami())
        return answer

    async def register_function(
        self,
        fn: Callable[..., Any],
        *,
        function_name: str | None = None,
        description: str | None = None,
    ) -> str:
        """Register ``fn``; returns its id. Cached per function object: concurrent calls for
        the same function share one request, later calls send nothing and serialize
        nothing (the code is serialized only on a miss)."""
        key = function_key(fn, function_name, description)
        task = self._functions.get(key) if key is not None else None
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            return task.result()
        request = _base.register_function(fn, function_name=function_name, description=description)
        if key is None:
            return _base.parse_function_id(await self._send(request))
        if task is None:
            task = asyncio.ensure_future(self._register(request))
            self._functions[key] = task
        try:
            return await asyncio.shield(task)
        except Exception:
            if self._functions.get(key) is task:
                del self._functions[key]
            raise

    async def _register(self, request: _base.Request) -> str:
        return _base.parse_function_id(await self._send(request))

    async def get_function(self, function_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_base.get_function(function_id))
        return answer

    async def register_endpoint(self, name: str) -> str:
        return _base.parse_endpoint_id(await self._send(_base.register_endpoint(name)))

    async def register_endpoint_with_credential(self, name: str) -> tuple[str, str | None]:
        return _base.parse_endpoint_registration(await self._send(_base.register_endpoint(name)))

    async def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_base.get_endpoint(endpoint_id))
        return answer

    async def get_endpoint_statuses(self, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(
            _base.endpoint_statuses(limit=limit, offset=offset)
        )
        return answer

    async def rotate_endpoint_credential(self, endpoint_id: str) -> str:
        request = _base.rotate_endpoint_credential(endpoint_id)
        return _base.parse_credential(await self._send(request))

    async def revoke_endpoint_credential(self, endpoint_id: str) -> bool:
        request = _base.revoke_endpoint_credential(endpoint_id)
        return _base.parse_revoked(await self._send(request))

    @property
    def submit_requests(self) -> int:
        """Batch submit requests this client has sent for :meth:`run` and :meth:`submit`."""
        return self._queue.requests

    async def run(
        self, *args: Any, endpoint_id: str | None = None, function_id: str, **kwargs: Any
    ) -> Any:
        """Run ``function_id`` on the endpoint and return its result, pushed over the
        WebSocket. A remote exception is raised as its own type when it can be rebuilt here
        (``except ValueError`` works), else as :class:`~sdk.errors.TaskFailed`; either carries
        the remote traceback. Cancelling the await stops waiting; a task already sent still
        runs."""
        return await self.run_task(function_id, args, kwargs, endpoint_id=endpoint_id)

    async def run_task(
        self,
        function_id: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        endpoint_id: str | None = None,
        walltime_s: float | None = None,
    ) -> Any:
        """:meth:`run` with the arguments passed as a tuple and a dict (see
        :meth:`submit_task` for ``walltime_s``)."""
        return await self.submit_task(
            function_id, args, kwargs, endpoint_id=endpoint_id, walltime_s=walltime_s
        )

    def submit(
        self, *args: Any, endpoint_id: str | None = None, function_id: str, **kwargs: Any
    ) -> TaskHandle:
        """Queue one call of ``function_id``; returns its :class:`~sdk.handles.TaskHandle` at
        once (``await`` it for the value). Call it from the loop the client runs in."""
        return self.submit_task(function_id, args, kwargs, endpoint_id=endpoint_id)

    def submit_task(
        self,
        function_id: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        endpoint_id: str | None = None,
        walltime_s: float | None = None,
    ) -> TaskHandle:
        """:meth:`submit` with the arguments passed as a tuple and a dict. ``walltime_s`` caps
        how long the task may run: past it, it fails with ``WalltimeExceeded``."""
        endpoint = self.config.require_endpoint(endpoint_id)
        spec = _base.task_spec(function_id, args, kwargs, walltime_s=walltime_s)
        return TaskHandle(self._queue.put(endpoint, spec))

    def watch_task(self, task_id: str) -> TaskHandle:
        """A handle for a task of this client's task group submitted earlier (by this or
        another client: see ``Executor.reload_tasks``); it resolves from the pushed results.
        The task group must be set (``task_group_id=`` or an earlier submit)."""
        if self.task_group_id is None:
            raise RuntimeError("watch_task() needs the client's task_group_id")
        if self.results.task_group_id is None:
            self.results.task_group_id = self.task_group_id
        loop = asyncio.get_running_loop()
        submission = Submission({"function_id": "", "payload": ""}, loop.create_future())
        submission.picked = True
        submission.task_id = task_id
        self.results.watch(task_id, _resolver(submission))
        return TaskHandle(submission)

    async def wait_sent(self, handle: TaskHandle) -> str | None:
        """Wait until the request carrying ``handle``'s task was answered; its task id (None
        if it never left)."""
        return await self._queue.wait_sent(handle.submission)

    def as_completed(
        self, handles: Iterable[TaskHandle], *, timeout_s: float | None = None
    ) -> AsyncIterator[TaskHandle]:
        """Yield each handle as its task finishes (see :func:`sdk.handles.as_completed`)."""
        return as_completed(handles, timeout_s=timeout_s)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task upstream; True only if it will not run (it was still queued).

        A running task is asked to stop (its agent interrupts it) but this answers False,
        as for a running ``concurrent.futures`` future."""
        outcome = _base.parse_cancel(await self._send(_base.cancel_task(task_id)))
        return outcome == "cancelled"

    async def _send_batch(self, endpoint_id: str, batch: list[Submission]) -> None:
        with self.results.submitting():
            reply = await self._submit(endpoint_id, [s.spec for s in batch])
            if reply["task_group_id"] != self.results.task_group_id:
                raise APIError(
                    200,
                    "BAD_RESPONSE",
                    f"tasks went into group {reply['task_group_id']}, "
                    f"not the client's {self.results.task_group_id}",
                )
            for task_id, submission in zip(reply["task_ids"], batch, strict=True):
                submission.task_id = task_id
                self.results.watch(task_id, _resolver(submission))

    async def _submit(self, endpoint_id: str, specs: list[TaskSpec]) -> SubmitResponse:
        if self.task_group_id is None:
            async with self._group_lock:  # the first submit makes the group; others join it
                return await self._submit_now(endpoint_id, specs)
        return await self._submit_now(endpoint_id, specs)

    async def _submit_now(self, endpoint_id: str, specs: list[TaskSpec]) -> SubmitResponse:
        request = _base.submit(endpoint_id, specs, self.task_group_id)
        reply = _base.parse_submit(await self._send(request), len(specs))
        if self.task_group_id is None:
            self.task_group_id = reply["task_group_id"]
        if self.results.task_group_id is None:
            self.results.task_group_id = reply["task_group_id"]
        return reply

    def create_batch(self) -> Batch:
        return Batch()

    async def batch_run(self, endpoint_id: str | None, batch: Batch) -> list[str]:
        """Submit every task of ``batch`` in one request; task ids in the order added.
        Their results are polled (:meth:`get_result`), not pushed."""
        if not batch.tasks:
            return []
        endpoint = self.config.require_endpoint(endpoint_id)
        return (await self._submit(endpoint, batch.tasks))["task_ids"]

    async def get_task(self, task_id: str) -> TaskInfo:
        return _base.parse_task_info(await self._send(_base.get_task(task_id)))

    async def get_result(self, task_id: str, *, timeout_s: float | None = None) -> Any:
        """The task's value now; raises :class:`~sdk.errors.TaskPending` while it is not done
        and the remote exception (see :meth:`run`) when it failed. ``timeout_s`` waits up to
        that long for it to finish with long polls, as ``Client.get_result`` does."""
        if timeout_s is None:
            return _base.task_result(await self.get_task(task_id))
        loop = asyncio.get_running_loop()
        clock = _base.LongPoll(timeout_s=timeout_s, poll_s=0.5, now=loop.time())
        while True:
            asked_s, started = clock.wait_s(loop.time()), loop.time()
            request = _base.get_task(task_id, wait_s=asked_s)
            info = _base.parse_task_info(await self._send(request))
            now = loop.time()
            if _base.is_terminal(info) or clock.expired(now):
                return _base.task_result(info)
            pause = clock.pause_s(asked_s=asked_s, took_s=now - started, progressed=False, now=now)
            await asyncio.sleep(pause)

    async def get_batch_result(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per task id ``{"pending", "status", "result"}`` or ``"exception"`` (plus ``"stdout"``
        and ``"stderr"`` when the task printed anything); one request per 1,000 ids."""
        return await self._send_all(_base.get_batch_result(task_ids))

    async def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskInfo]:
        """The :class:`~sdk.messages.TaskInfo` of each task; one request per 1,000 ids."""
        return await self._send_all(_base.get_tasks(task_ids))

    async def wait(
        self,
        task_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
        progress: bool = False,
        poll_s: float = 0.5,
    ) -> dict[str, dict[str, Any]]:
        """Wait with long polls until every task has finished; then :meth:`get_batch_result`
        of them all, as ``Client.wait`` does (for tasks made by :meth:`batch_run`; :meth:`run` and
        :meth:`submit` get theirs pushed). Raises :class:`TimeoutError` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        waiting = _base.Waiting(task_ids, timeout_s=timeout_s, poll_s=poll_s, now=loop.time())
        clock = waiting.clock
        with Progress(len(waiting.task_ids), enabled=progress) as bar:
            while not waiting.finished:
                asked_s, started = clock.wait_s(loop.time()), loop.time()
                calls = _base.get_batch_result(waiting.asking(), wait_s=asked_s)
                answer = await self._send_all(calls)
                progressed = waiting.record(answer)
                bar.update(len(waiting.done), failed=waiting.failed)
                now = loop.time()
                if waiting.finished:
                    break
                if clock.expired(now):
                    raise waiting.timed_out()
                left = len(waiting.task_ids) - len(waiting.done)
                took_s = now - started
                await asyncio.sleep(
                    clock.pause_s(
                        asked_s=asked_s, took_s=took_s, progressed=progressed, now=now, pending=left
                    )
                )
            return waiting.results()

    async def cancel_tasks(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Cancel many tasks (one request per 1,000); per task id the outcome:
        ``cancelled``, ``interrupt_requested`` or ``finished``."""
        return await self._send_all(_base.cancel_many(task_ids))

    async def get_task_group(
        self, task_group_id: str, *, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of the group's tasks: ``{"total", "task_ids", "tasks": [{id, state}]}``."""
        request = _base.get_task_group(task_group_id, offset=offset, limit=limit)
        answer: dict[str, Any] = await self._send(request)
        return answer


def _env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for ``url`` and its credentials; ``(None, None)``
    when none does or ``NO_PROXY`` exempts the host."""
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None
