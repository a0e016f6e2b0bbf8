"""``Client``: the synchronous SDK, HTTP only. Submit tasks, then poll for their results.

::

    with Client() as fx:
        fid = fx.register_function(double)
        tid = fx.run(21, function_id=fid)          # the default endpoint
        fx.get_result(tid)                          # raises TaskPending until it is done

Requests are built and answers parsed by :mod:`sdk._base`, shared with
:class:`~sdk.asyncio_client.AsyncClient`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import httpx

from sdk import _base
from sdk._base import Batch, FunctionKey, function_key
from sdk.config import ClientConfig
from sdk.errors import ConnectionFailed
from sdk.messages import TaskInfo


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
    ) -> None:
        """Without ``url``/``token`` the service is found as :mod:`sdk.config` describes."""
        self.config = ClientConfig.from_env(
            url=url, token=token, ws_url=ws_url, endpoint_id=endpoint_id
        )
        self.task_group_id: str | None = None
        self._functions: dict[FunctionKey, str] = {}
        self._ws_url = self.config.ws_url
        self._http = httpx.Client(
            base_url=self.config.url,
            headers=_base.auth_headers(self.config.token),
            timeout=timeout_s,
        )

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, request: _base.Request) -> Any:
        try:
            response = self._http.request(request.method, request.path, json=request.json)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.config.url, f"{type(exc).__name__}: {exc}") from exc
        return _base.parse_response(
            response.status_code,
            response.content,
            request_id=response.headers.get("x-request-id", ""),
        )

    def close(self) -> None:
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
        """The WebSocket service's base URL (see :meth:`get_ws_url`)."""
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

        The id is cached per function object, so registering it again sends nothing."""
        key = function_key(fn, function_name, description)
        if key is not None and key in self._functions:
            return self._functions[key]
        request = _base.register_function(fn, function_name=function_name, description=description)
        function_id = _base.parse_function_id(self._send(request))
        if key is not None:
            self._functions[key] = function_id
        return function_id

    def get_function(self, function_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.get_function(function_id))
        return answer

    def register_endpoint(self, name: str) -> str:
        """Create (or find, by name) one of your endpoints; returns its id."""
        return _base.parse_endpoint_id(self._send(_base.register_endpoint(name)))

    def get_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.get_endpoint(endpoint_id))
        return answer

    def run(
        self, *args: Any, endpoint_id: str | None = None, function_id: str, **kwargs: Any
    ) -> str:
        """Queue one call of ``function_id`` on the endpoint; returns the task id at once."""
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

    def get_result(self, task_id: str) -> Any:
        """The task's value; raises :class:`~sdk.errors.TaskPending` while it is not done and
        :class:`~sdk.errors.TaskFailed` (with the remote traceback) when it failed."""
        return _base.task_result(self.get_task(task_id))

    def get_batch_result(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per task id ``{"pending", "status", "result"}`` or ``"exception"``, in one request."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        return _base.batch_results(self._send(_base.batch_status(ids)), ids)

    def get_task_group(self, task_group_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_base.get_task_group(task_group_id))
        return answer
