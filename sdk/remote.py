"""Remote-function handles, in the Runhouse/Kubetorch style: call a function where it runs.

::

    rdouble = client.function(double, endpoint_id=ep)
    rdouble(21)                          # 42: blocks until the endpoint answers
    await rdouble(21, async_=True)       # the same, awaited (any running event loop)
    rdouble.async_ = True                # make awaiting the default
    future = rdouble.submit(21)          # a concurrent.futures.Future (a TaskFuture)
    list(rdouble.map(range(10)))         # in order, batched into few requests

The function is registered when the handle is made; handles of the same code share that
registration (the client caches it by function object and by serialized code, and the
service gives the same code of the same user the same id). Calls go through the client's
shared :class:`~sdk.executor.Executor` for the endpoint, so calls made together leave as one
batch request and results are pushed, not polled.

A remote exception is raised as its own type where it can be rebuilt here, with the remote
traceback attached; else as :class:`~sdk.errors.TaskFailed`. What the function printed is on
the future (``stdout``, ``stderr``).

Blocking calls never touch the caller's event loop (the work runs on the Executor's own
thread), so ``rf(2)`` works in a Jupyter cell, where a loop is already running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from sdk.futures import TaskFuture

if TYPE_CHECKING:
    from sdk.client import Client
    from sdk.executor import Executor

P = ParamSpec("P")
T = TypeVar("T")


class RemoteFunction(Generic[P, T]):
    """``fn`` bound to an endpoint through a :class:`~sdk.client.Client`."""

    def __init__(
        self,
        client: Client,
        fn: Callable[P, T],
        *,
        endpoint_id: str | None = None,
        function_name: str | None = None,
        async_: bool = False,
    ) -> None:
        self.client = client
        self.fn = fn
        self.endpoint_id = client.config.require_endpoint(endpoint_id)
        self.function_name = function_name
        self.async_ = async_
        """When true, calling the handle returns an awaitable instead of blocking."""
        self.function_id = client.register_function(fn, function_name=function_name)
        """The registered function's id."""

    @property
    def executor(self) -> Executor:
        return self.client.executor(self.endpoint_id)

    def __call__(self, *args: Any, async_: bool | None = None, **kwargs: Any) -> Any:
        """Run it remotely: the result (blocking), or with ``async_=True`` (a keyword taken
        by the handle, not passed on; default :attr:`async_`) an awaitable of it."""
        future = self.executor.submit_to_registered_function(self.function_id, args, kwargs)
        if self.async_ if async_ is None else async_:
            return _awaited(future)
        return future.result()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Run it remotely; returns at once with the task's future."""
        future: TaskFuture[T] = self.executor.submit_to_registered_function(
            self.function_id, args, kwargs
        )
        return future

    def map(
        self,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        progress: bool = True,
    ) -> Iterator[T]:
        """Results of the function over the iterables' items, in order (as built-in ``map``).

        Every task is submitted before the first result is awaited; ``progress`` draws a bar
        on standard error when it is a terminal."""
        function_id = self.function_id
        executor = self.executor
        futures: list[concurrent.futures.Future[T]] = [
            executor.submit_to_registered_function(function_id, items)
            for items in zip(*iterables, strict=False)
        ]
        return executor.results_of(futures, timeout=timeout, progress=progress)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"<RemoteFunction {name} on {self.endpoint_id}>"


async def _awaited(future: concurrent.futures.Future[Any]) -> Any:
    return await asyncio.wrap_future(future)
