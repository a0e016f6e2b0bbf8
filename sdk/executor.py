"""``Executor``: a ``concurrent.futures.Executor`` whose work runs on an fxbroker endpoint.

::

    with Executor(endpoint_id) as ex:
        futures = [ex.submit(double, i) for i in range(1000)]
        print([f.result() for f in futures])

The Executor adds a thread, not a protocol: one background thread runs an asyncio loop with
an :class:`~sdk.asyncio_client.AsyncClient`, so submissions are batched the same way
(:mod:`sdk.batching`: the first leaves at once, those queued while a request is in flight
join the next, up to ``batch_size``) and results arrive over the WebSocket
(:mod:`sdk.results`), each resolving its future once, with the value or with
:class:`~sdk.errors.TaskFailed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from sdk.asyncio_client import AsyncClient
from sdk.client import Client
from sdk.config import ClientConfig

P = ParamSpec("P")
T = TypeVar("T")


class Executor(concurrent.futures.Executor):
    """Runs submitted functions on one endpoint; ``map`` works as for any executor.

    Each function is registered once per Executor. All tasks go into one task group:
    ``task_group_id`` if given (results already in that group are not replayed into new
    futures), else the one the first submit makes."""

    def __init__(
        self,
        endpoint_id: str | None = None,
        client: Client | None = None,
        batch_size: int = 128,
        *,
        task_group_id: str | None = None,
    ) -> None:
        """``client`` lends its URL and token; without it the service is found as
        :mod:`sdk.config` describes. A missing endpoint raises
        :class:`~sdk.errors.ConfigurationError` here, not at the first submit."""
        config = client.config if client is not None else ClientConfig.from_env()
        self.endpoint_id = config.require_endpoint(endpoint_id)
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(
            config.url,
            config.token,
            ws_url=config.ws_url,
            endpoint_id=self.endpoint_id,
            batch_size=batch_size,
            task_group_id=task_group_id,
        )
        self._thread = threading.Thread(target=self._serve, name="fxbroker-executor", daemon=True)
        self._thread.start()

    @property
    def task_group_id(self) -> str | None:
        """The task group of every task this Executor submits (known after the first)."""
        return self._client.task_group_id

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _schedule(self, coro: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                coro.close()
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` on the endpoint; the future gets its result.

        Cancelling the future stops waiting for it; if the task was already sent, it still
        runs on the endpoint."""
        return self._schedule(self._run_function(fn, args, kwargs))

    def submit_to_registered_function(
        self,
        function_id: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Run an already registered function; the future gets its result."""
        return self._schedule(
            self._client.run_task(function_id, args, kwargs, endpoint_id=self.endpoint_id)
        )

    async def _run_function(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        function_id = await self._client.register_function(fn)
        return await self._client.run_task(function_id, args, kwargs, endpoint_id=self.endpoint_id)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more submissions and close the connections once every future is done.

        ``cancel_futures=True`` cancels every future not yet done (tasks already sent still
        run on the endpoint, unobserved). ``wait=True`` blocks until the remaining futures
        are done and the background thread has stopped; called from a future's callback
        (which runs on that thread) it returns at once instead of waiting on itself."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if first:
            asyncio.run_coroutine_threadsafe(self._close(futures), self._loop)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    async def _close(self, futures: list[concurrent.futures.Future[Any]]) -> None:
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._client.aclose()
        finally:
            self._loop.stop()
