"""Remote-function handles, in the Runhouse/Kubetorch style: call a function where it runs.

::

    from fxbroker import Client, RemoteFunction

    with Client() as fx:
        rdouble = RemoteFunction(double, client=fx, endpoint_id=ep)
        rdouble(21)                          # 42: blocks until the endpoint answers
        await rdouble(21, async_=True)       # the same, awaited (any running event loop)
        rdouble.async_ = True                # make awaiting the default
        future = rdouble.submit(21)          # a concurrent.futures.Future (a TaskFuture)
        list(rdouble.map(range(10)))         # in order, batched into few requests

The function is registered when the handle is made; handles of the same code share that
registration (the client caches it by function object and by serialized code, and the
service gives the same code of the same user the same id). Calls go through one
:class:`~sdk.executor.Executor` per client and endpoint, shared by all that client's handles
(:func:`shared_executor`), so calls made together leave as one batch request and results are
pushed, not polled. Closing the client shuts those Executors down (through its
``on_close`` hook: the client knows nothing of executors).

A remote exception is raised as its own type where it can be rebuilt here, with the remote
traceback attached; else as :class:`~sdk.errors.TaskFailed`. What the function printed is on
the future (``stdout``, ``stderr``). ``walltime_s`` caps how long each call may run; past it
the call fails with ``WalltimeExceeded``.

Blocking calls never touch the caller's event loop (the work runs on the Executor's own
thread), so ``rf(2)`` works in a Jupyter cell, where a loop is already running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

from sdk.client import Client
from sdk.executor import Executor
from sdk.futures import TaskFuture

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_shared: dict[int, dict[str, Executor]] = {}
"""Per client (by identity) its shared Executor per endpoint. The Executors hold their
client, so an identity here stays its client's until the client's close drops the entry."""


def shared_executor(client: Client, endpoint_id: str) -> Executor:
    """The :class:`~sdk.executor.Executor` that ``client``'s remote functions share for
    ``endpoint_id``: made on first use, shut down when the client closes."""
    with _lock:
        executors = _shared.get(id(client))
        if executors is None:
            executors = _shared[id(client)] = {}
            client.on_close(functools.partial(_shut_down, id(client)))
        executor = executors.get(endpoint_id)
        if executor is None:
            executor = executors[endpoint_id] = Executor(endpoint_id, client=client)
        return executor


def _shut_down(client_key: int) -> None:
    with _lock:
        executors = _shared.pop(client_key, {})
    for executor in executors.values():
        executor.shutdown(wait=False)


class RemoteFunction(Generic[P, T]):
    """``fn`` bound to an endpoint through a :class:`~sdk.client.Client` (see the module
    docstring)."""

    def __init__(
        self,
        fn: Callable[P, T],
        *,
        client: Client,
        endpoint_id: str | None = None,
        function_name: str | None = None,
        async_: bool = False,
        walltime_s: float | None = None,
    ) -> None:
        """Registers ``fn`` with ``client`` now; ``endpoint_id`` defaults to the client's."""
        self.client = client
        self.fn = fn
        self.endpoint_id = client.config.require_endpoint(endpoint_id)
        self.function_name = function_name
        self.async_ = async_
        """When true, calling the handle returns an awaitable instead of blocking."""
        self.walltime_s = walltime_s
        """The longest each call may run, in seconds (``None``: the endpoint's limit only)."""
        self.function_id = client.register_function(fn, function_name=function_name)
        """The registered function's id."""

    @property
    def executor(self) -> Executor:
        """The Executor this handle's calls go through (shared per client and endpoint)."""
        return shared_executor(self.client, self.endpoint_id)

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskFuture[Any]:
        return self.executor.submit_to_registered_function(
            self.function_id, args, kwargs, walltime_s=self.walltime_s
        )

    def __call__(self, *args: Any, async_: bool | None = None, **kwargs: Any) -> Any:
        """Run it remotely: the result (blocking), or with ``async_=True`` (a keyword taken
        by the handle, not passed on; default :attr:`async_`) an awaitable of it."""
        future = self._submit(args, kwargs)
        if self.async_ if async_ is None else async_:
            return _awaited(future)
        return future.result()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Run it remotely; returns at once with the task's future."""
        future: TaskFuture[T] = self._submit(args, kwargs)
        return future

    def map(
        self,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Results of the function over the iterables' items, in order (as built-in ``map``).

        Every task is submitted before the first result is awaited; ``progress`` draws a bar
        on standard error when it is a terminal."""
        futures: list[concurrent.futures.Future[T]] = [
            self._submit(items, {}) for items in zip(*iterables, strict=False)
        ]
        return self.executor.results_of(futures, timeout=timeout, progress=progress)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"<RemoteFunction {name} on {self.endpoint_id}>"


async def _awaited(future: concurrent.futures.Future[Any]) -> Any:
    return await asyncio.wrap_future(future)
