"""``Client``: the synchronous SDK. Submit tasks, then poll for their results.

::

    from fxbroker import Client, RemoteFunction

    with Client() as fx:
        fid = fx.register_function(double)
        tid = fx.run(21, function_id=fid)          # the default endpoint; a task id at once
        fx.get_result(tid)                          # raises TaskPending until it is done
        fx.wait([tid], progress=True)               # polls until done, a bar on a terminal

        rdouble = RemoteFunction(double, client=fx) # a remote-function handle (sdk.remote)
        rdouble(21)                                 # 42, computed on the endpoint

``Client`` and :class:`~sdk.asyncio_client.AsyncClient` are twins: the same methods with the
same arguments, one blocking, one to await, both building their requests and parsing the
answers with :mod:`sdk._base`. The one difference in meaning is ``run``: ``Client.run``
returns the task id at once (poll with ``get_result`` or ``wait``), ``await
AsyncClient.run(...)`` returns the function's result, pushed over a WebSocket (funcX's async
API). The client is plain blocking HTTP, so it works from any thread, including one that
already runs an event loop (a Jupyter cell).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from sdk import _base, tls
from sdk._base import Batch, FunctionKey, function_key
from sdk.config import ClientConfig
from sdk.messages import TaskInfo
from sdk.progress import Progress
from sdk.retry import Outage, Retry
from sdk.transport import Transport, TransportError

R = TypeVar("R")


class Client:
    """A synchronous client of the web service.

    Every task the client submits (``run`` and ``batch_run``) goes into one task group, made
    by the first submit, as funcX did; :attr:`task_group_id` names it afterwards.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        ws_url: str | None = None,
        endpoint_id: str | None = None,
        retry_for_s: float | None = None,
        ca_file: str | None = None,
    ) -> None:
        """Without ``url``/``token`` the service is found as :mod:`sdk.config` describes.

        ``retry_for_s`` bounds how long an outage is waited out: a call whose request fails
        to connect, or is answered 429/502/503/504, is sent again with backoff until the
        service has been unavailable that long, then raises
        :class:`~sdk.errors.ConnectionFailed` (or the last :class:`~sdk.errors.APIError`,
        saying so). Default ``FXBROKER_RETRY_FOR_S``, else 60; 0 turns retries off. One
        attempt may add up to ``timeout_s`` beyond the bound.

        ``ca_file`` names the PEM file of certificate authorities an ``https://`` service's
        certificate is checked against (default ``FXBROKER_CA_FILE``, else ``SSL_CERT_FILE``
        or the default authorities; :mod:`sdk.tls`). Verification is never off: a refused
        certificate raises :class:`~sdk.errors.CertificateNotTrusted` at once."""
        self.config = ClientConfig.from_env(
            url=url,
            token=token,
            ws_url=ws_url,
            endpoint_id=endpoint_id,
            retry_for_s=retry_for_s,
            ca_file=ca_file,
        )
        self.retry = Retry(retry_for_s=self.config.retry_for_s)
        """The retry policy of this client's requests (see :mod:`sdk.retry`)."""
        self._outage = Outage(self.retry, service=self.config.url)
        self.task_group_id: str | None = None
        self._functions: dict[FunctionKey, str] = {}
        self._by_code: dict[tuple[str, str, str | None], str] = {}
        self._on_close: list[Callable[[], None]] = []
        self._ws_url = self.config.ws_url
        self._ssl = tls.client_context(self.config.ca_file)
        self._http = Transport(
            self.config.url,
            _base.auth_headers(self.config.token),
            timeout_s=timeout_s,
            ssl_context=self._ssl,
        )

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, request: _base.Request) -> Any:
        """Send ``request`` until it is answered (see :class:`~sdk._base.Exchange`)."""
        exchange = _base.Exchange(request, self._outage, url=self.config.url)
        while True:
            try:
                answer = self._http.request(
                    request.method,
                    request.path,
                    body=request.body(),
                    headers=request.headers(),
                    held_s=request.wait_s,
                )
            except TransportError as exc:
                delay = exchange.after_error(exc, time.monotonic())
                if delay is None:
                    raise exchange.unreachable(time.monotonic()) from exc
            else:
                retry_after = answer.headers.get("retry-after")
                delay = exchange.after_answer(answer.status, retry_after, time.monotonic())
                if delay is None:
                    return exchange.result(
                        answer.status,
                        answer.content,
                        request_id=answer.headers.get("x-request-id", ""),
                        now=time.monotonic(),
                    )
            time.sleep(delay)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the client closes, before its connections do (how the
        Executors shared by remote functions, :mod:`sdk.remote`, are shut down with it)."""
        self._on_close.append(callback)

    def _send_all(self, calls: _base.Calls[R]) -> R:
        return calls.merge([self._send(request) for request in calls.requests])

    def close(self) -> None:
        """Run the :meth:`on_close` callbacks (newest first), then close the HTTP
        connections. Executors shared by remote functions stop accepting work; results still
        outstanding keep arriving until they are done."""
        callbacks, self._on_close = self._on_close, []
        for callback in reversed(callbacks):
            callback()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def default_endpoint_id(self) -> str | None:
        """The endpoint used when a call names none (``FXBROKER_ENDPOINT_ID`` or the file)."""
        return self.config.endpoint_id

    @property
    def ws_url(self) -> str:
        """The WebSocket service's base URL, or its copies' comma-separated (see
        :meth:`get_ws_url`)."""
        return self.get_ws_url()

    def get_ws_url(self) -> str:
        """The WebSocket service's base URL; asked of the web service when not configured."""
        if self._ws_url is None:
            self._ws_url = _base.parse_ws_url(self._send(_base.info()))
        return self._ws_url

    # -- calls -----------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.whoami())
        return answer

    def register_function(
        self,
        fn: Callable[..., Any],
        *,
        function_name: str | None = None,
        description: str | None = None,
    ) -> str:
        """Register ``fn`` (serialized as code); returns its function id.

        The id is cached per function object and per serialized code, so registering it
        again (or another object with the same code, name and description) sends nothing."""
        key = function_key(fn, function_name, description)
        if key is not None and key in self._functions:
            return self._functions[key]
        request = _base.register_function(fn, function_name=function_name, description=description)
        code_key = (request.json["function_code"], request.json["function_name"], description)
        function_id = self._by_code.get(code_key)
        if function_id is None:
            function_id = _base.parse_function_id(self._send(request))
            self._by_code[code_key] = function_id
        if key is not None:
            self._functions[key] = function_id
        return function_id

    def get_function(self, function_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.get_function(function_id))
        return answer

    def register_endpoint(self, name: str) -> str:
        """Create (or find, by name) one of your endpoints; returns its id."""
        return _base.parse_endpoint_id(self._send(_base.register_endpoint(name)))

    def register_endpoint_with_credential(self, name: str) -> tuple[str, str | None]:
        """Like :meth:`register_endpoint`, also returning the endpoint's credential when
        this call created the endpoint (shown only this once), else None."""
        return _base.parse_endpoint_registration(self._send(_base.register_endpoint(name)))

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.get_endpoint(endpoint_id))
        return answer

    def get_endpoint_statuses(self, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of your endpoints and those shared with you, each with its agents'
        heartbeat, its queue and the tasks of yours it finished in the last 15 minutes
        (``GET /v1/endpoints/status``; its shape is in the OpenAPI document)."""
        answer: dict[str, Any] = self._send(_base.endpoint_statuses(limit=limit, offset=offset))
        return answer

    def rotate_endpoint_credential(self, endpoint_id: str) -> str:
        """Issue your endpoint a new credential (returned only this once); the old one stops
        working. Its agents need the new one to connect."""
        return _base.parse_credential(self._send(_base.rotate_endpoint_credential(endpoint_id)))

    def revoke_endpoint_credential(self, endpoint_id: str) -> bool:
        """Revoke your endpoint's credential; False when it had none."""
        return _base.parse_revoked(self._send(_base.revoke_endpoint_credential(endpoint_id)))

    def run(
        self, *args: Any, endpoint_id: str | None = None, function_id: str, **kwargs: Any
    ) -> str:
        """Queue one call of ``function_id`` on the endpoint; returns the task id at once.
        (``AsyncClient.run`` returns the result instead: see the module docstring.)"""
        batch = self.create_batch()
        batch.add(function_id, args, kwargs)
        return self.batch_run(endpoint_id, batch)[0]

    def create_batch(self) -> Batch:
        return Batch()

    def batch_run(self, endpoint_id: str | None, batch: Batch) -> list[str]:
        """Submit every task of ``batch`` in one request; task ids in the order added."""
        if not batch.tasks:
            return []
        endpoint = self.config.require_endpoint(endpoint_id)
        request = _base.submit(endpoint, batch.tasks, self.task_group_id)
        reply = _base.parse_submit(self._send(request), len(batch.tasks))
        self.task_group_id = reply["task_group_id"]
        return reply["task_ids"]

    def get_task(self, task_id: str) -> TaskInfo:
        """The task as the service reports it (state, timestamps, result or exception)."""
        return _base.parse_task_info(self._send(_base.get_task(task_id)))

    def get_result(self, task_id: str, *, timeout_s: float | None = None) -> Any:
        """The task's value; raises :class:`~sdk.errors.TaskPending` while it is not done. A
        failed task raises its remote exception as its own type when it can be rebuilt here
        (``except ValueError`` works), else :class:`~sdk.errors.TaskFailed`; either carries
        the remote traceback (a note, and ``remote_traceback``).

        ``timeout_s`` waits up to that long for the task to finish, returning as soon as it
        does: each request is a long poll the service answers when the task is terminal (at
        most 20 s, then the next), so nothing sleeps. Still pending then: ``TaskPending``."""
        if timeout_s is None:
            return _base.task_result(self.get_task(task_id))
        clock = _base.LongPoll(timeout_s=timeout_s, poll_s=0.5, now=time.monotonic())
        while True:
            asked_s, started = clock.wait_s(time.monotonic()), time.monotonic()
            info = _base.parse_task_info(self._send(_base.get_task(task_id, wait_s=asked_s)))
            now = time.monotonic()
            if _base.is_terminal(info) or clock.expired(now):
                return _base.task_result(info)
            pause = clock.pause_s(asked_s=asked_s, took_s=now - started, progressed=False, now=now)
            time.sleep(pause)

    def get_batch_result(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per task id ``{"pending", "status", "result"}`` or ``"exception"`` (plus ``"stdout"``
        and ``"stderr"`` when the task printed anything); one request per 1,000 ids."""
        return self._send_all(_base.get_batch_result(task_ids))

    def get_tasks(self, task_ids: Sequence[str]) -> dict[str, TaskInfo]:
        """The :class:`~sdk.messages.TaskInfo` of each task (state, timestamps, result or
        exception, stdout and stderr); one request per 1,000 ids."""
        return self._send_all(_base.get_tasks(task_ids))

    def wait(
        self,
        task_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
        progress: bool = False,
        poll_s: float = 0.5,
    ) -> dict[str, dict[str, Any]]:
        """Wait until every task has finished; then :meth:`get_batch_result` of them all.

        Each request is a long poll about the tasks not yet finished (up to 1,000 at a
        time): the service answers as soon as any of them finished, so results are seen
        when they exist and nothing sleeps. ``poll_s`` is the interval for a service that
        does not hold answers (an older one). ``progress`` draws a bar on standard error
        when it is a terminal, nothing otherwise. Raises :class:`TimeoutError` after
        ``timeout_s``."""
        waiting = _base.Waiting(task_ids, timeout_s=timeout_s, poll_s=poll_s, now=time.monotonic())
        clock = waiting.clock
        with Progress(len(waiting.task_ids), enabled=progress) as bar:
            while not waiting.finished:
                asked_s, started = clock.wait_s(time.monotonic()), time.monotonic()
                calls = _base.get_batch_result(waiting.asking(), wait_s=asked_s)
                answer = self._send_all(calls)
                progressed = waiting.record(answer)
                bar.update(len(waiting.done), failed=waiting.failed)
                now = time.monotonic()
                if waiting.finished:
                    break
                if clock.expired(now):
                    raise waiting.timed_out()
                left = len(waiting.task_ids) - len(waiting.done)
                took_s = now - started
                time.sleep(
                    clock.pause_s(
                        asked_s=asked_s, took_s=took_s, progressed=progressed, now=now, pending=left
                    )
                )
            return waiting.results()

    def cancel(self, task_id: str) -> bool:
        """Cancel a task; True only if it will not run (it was still queued and now is
        ``cancelled``). A running task is asked to stop, but this answers False."""
        return _base.parse_cancel(self._send(_base.cancel_task(task_id))) == "cancelled"

    def cancel_tasks(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Cancel many tasks (one request per 1,000); per task id the outcome:
        ``cancelled``, ``interrupt_requested`` or ``finished``."""
        return self._send_all(_base.cancel_many(task_ids))

    def get_task_group(
        self, task_group_id: str, *, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of the group's tasks: ``{"total", "task_ids", "tasks": [{id, state}]}``."""
        request = _base.get_task_group(task_group_id, offset=offset, limit=limit)
        answer: dict[str, Any] = self._send(request)
        return answer
