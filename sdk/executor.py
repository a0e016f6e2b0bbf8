"""``Executor``: a ``concurrent.futures.Executor`` whose work runs on an fxbroker endpoint.

::

    from fxbroker import Executor

    with Executor(endpoint_id) as ex:
        futures = [ex.submit(double, i) for i in range(1000)]
        print([f.result() for f in futures])

The Executor adds a thread, not a protocol: one background thread runs an asyncio loop with
an :class:`~sdk.asyncio_client.AsyncClient`, so submissions are batched the same way
(:mod:`sdk.batching`: the first leaves at once, batches double under backlog up to
``batch_size`` with a few requests in flight; ``batch_interval_s`` optionally waits for more) and
results arrive over the WebSocket (:mod:`sdk.results`), reconnecting from the last cursor after
any disconnect, each resolving its :class:`~sdk.futures.TaskFuture` exactly once.

``submit`` costs the caller a lock and an append: the loop is woken (``call_soon_threadsafe``)
only by the first submission of a burst, and each wake takes every submission made since,
so 10,000 submits in a row cost a handful of wakes, not 10,000 (:attr:`Executor.loop_wakes`).

Calls made from a thread that already runs an event loop (a Jupyter cell) work: nothing here
touches the caller's loop. Requests that must answer at once (cancel, reload) go over a
synchronous :class:`~sdk.client.Client`.

**Crash recovery.** Every task of an Executor goes into one task group. A new process can
reattach with ``Executor(endpoint_id, task_group_id=gid).reload_tasks()``: a future for every
task of the group, finished ones already resolved, the others resolved as they finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from sdk import _base, wire
from sdk.asyncio_client import AsyncClient
from sdk.client import Client
from sdk.config import ClientConfig
from sdk.errors import FxBrokerError
from sdk.futures import TaskFuture
from sdk.handles import TaskHandle
from sdk.progress import Progress
from sdk.retry import check_retry_for_s
from sdk.states import TERMINAL_STATES

P = ParamSpec("P")
T = TypeVar("T")

_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


class Executor(concurrent.futures.Executor):
    """Runs submitted functions on one endpoint; ``map`` works as for any executor.

    Each function is registered once per Executor, however often it is submitted. All tasks
    go into one task group: ``task_group_id`` if given, else the one the first submit makes.
    """

    def __init__(
        self,
        endpoint_id: str | None = None,
        client: Client | None = None,
        batch_size: int = 1000,
        *,
        task_group_id: str | None = None,
        batch_interval_s: float = 0.0,
        walltime_s: float | None = None,
        retry_for_s: float | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``client`` lends its URL and token (and answers cancel and reload requests);
        without it the service is found as :mod:`sdk.config` describes. A missing endpoint
        raises :class:`~sdk.errors.ConfigurationError` here, not at the first submit.
        ``walltime_s`` caps how long each task may run (past it, it fails with
        ``WalltimeExceeded``); the service rejects a value that is not a positive number.

        ``retry_for_s`` (default: the client's, else ``FXBROKER_RETRY_FOR_S``, else 60) is
        how long an outage of the web or ws service is waited out: submits, registrations
        and the result connection retry with backoff meanwhile; past it the futures still
        outstanding fail with :class:`~sdk.errors.ConnectionFailed`. So leaving the ``with``
        block never waits on a dead platform for much longer than that.

        ``ca_file`` (default: the client's, else ``FXBROKER_CA_FILE``) names the certificate
        authorities the ``https://`` and ``wss://`` services are checked against, as for
        :class:`~sdk.client.Client`."""
        if client is not None:
            config = client.config
            if retry_for_s is not None:
                config = dataclasses.replace(config, retry_for_s=check_retry_for_s(retry_for_s))
            if ca_file is not None:
                config = dataclasses.replace(config, ca_file=ca_file)
        else:
            config = ClientConfig.from_env(retry_for_s=retry_for_s, ca_file=ca_file)
        self.endpoint_id = config.require_endpoint(endpoint_id)
        self.walltime_s = walltime_s
        """The longest each task may run, in seconds (``None``: the endpoint's limit only)."""
        self._own_client = client is None
        self._sync = client if client is not None else _client_of(config)
        self._lock = threading.Lock()
        self._futures: dict[int, TaskFuture[Any]] = {}
        self._inbox: list[_Queued] = []
        self._woken = False  # a wake is scheduled and has not yet taken the inbox
        self._enqueueing: set[asyncio.Task[None]] = set()
        self.loop_wakes = 0
        """Times ``submit`` woke the loop thread (once per burst, not once per call)."""
        self._by_task: dict[str, TaskFuture[Any]] = {}
        self._shutdown = False
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(
            config.url,
            config.token,
            ws_url=config.ws_url,
            endpoint_id=self.endpoint_id,
            batch_size=batch_size,
            batch_interval_s=batch_interval_s,
            task_group_id=task_group_id,
            retry_for_s=config.retry_for_s,
            ca_file=config.ca_file,
        )
        self._thread = threading.Thread(target=self._serve, name="fxbroker-executor", daemon=True)
        self._thread.start()

    @property
    def task_group_id(self) -> str | None:
        """The task group of every task this Executor submits (known after the first)."""
        return self._client.task_group_id

    @property
    def submit_requests(self) -> int:
        """How many batch submit requests the Executor has sent."""
        return self._client.submit_requests

    # -- the loop thread ---------------------------------------------------------------------

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

    def _on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def _track(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures[id(future)] = future
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.pop(id(future), None)
        if future.cancelled() and isinstance(future, TaskFuture):
            # Nobody waits for it any more: take it out of the submit queue if still there.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._withdraw, future)

    def _withdraw(self, future: TaskFuture[Any]) -> None:
        handle = future.handle
        if handle is None:
            return
        if handle.task_id is not None:
            self._client.results.unwatch(handle.task_id)
        handle.withdraw()

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]:
        """Run ``fn(*args, **kwargs)`` on the endpoint; the future gets its result, or the
        remote exception (its own type where it can be rebuilt, else
        :class:`~sdk.errors.TaskFailed`). The future is a :class:`~sdk.futures.TaskFuture`."""
        return self._start(fn, None, args, kwargs)

    def submit_to_registered_function(
        self,
        function_id: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        walltime_s: float | None = None,
    ) -> TaskFuture[Any]:
        """Run an already registered function; the future gets its result. ``walltime_s``
        replaces the Executor's :attr:`walltime_s` for this task."""
        return self._start(None, function_id, args, kwargs or {}, walltime_s)

    def _start(
        self,
        fn: Callable[..., Any] | None,
        function_id: str | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        walltime_s: float | None = None,
    ) -> TaskFuture[Any]:
        future: TaskFuture[Any] = TaskFuture(self._cancel)
        self._track(future)
        walltime_s = self.walltime_s if walltime_s is None else walltime_s
        queued = _Queued(future, fn, function_id, args, kwargs, walltime_s)
        with self._lock:
            self._inbox.append(queued)
            if self._woken:
                return future  # the wake already scheduled will take it
            self._woken = True
            self.loop_wakes += 1
        self._loop.call_soon_threadsafe(self._take_inbox)
        return future

    def _take_inbox(self) -> None:
        """On the loop: take every submission made since the last wake, in order."""
        with self._lock:
            queued, self._inbox = self._inbox, []
            self._woken = False
        if queued:
            task = self._loop.create_task(self._enqueue_all(queued))
            self._enqueueing.add(task)
            task.add_done_callback(self._enqueueing.discard)

    async def _enqueue_all(self, queued: list[_Queued]) -> None:
        for q in queued:
            await self._enqueue(q.future, q.fn, q.function_id, q.args, q.kwargs, q.walltime_s)

    def flush(self, timeout_s: float | None = None) -> None:
        """Return once every task submitted so far has been sent and accepted by the service
        (its future has its ``task_id``), or has failed to be. Results need not be in."""

        async def sent() -> None:
            self._take_inbox()
            await asyncio.gather(*self._enqueueing, return_exceptions=True)
            with self._lock:
                handles = [f.handle for f in self._futures.values() if f.handle is not None]
            await asyncio.gather(*(self._client.wait_sent(h) for h in handles))

        asyncio.run_coroutine_threadsafe(sent(), self._loop).result(timeout_s)

    async def _enqueue(
        self,
        future: TaskFuture[Any],
        fn: Callable[..., Any] | None,
        function_id: str | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        walltime_s: float | None,
    ) -> None:
        try:
            if function_id is None:
                assert fn is not None
                function_id = await self._client.register_function(fn)
            with future.phase_lock:
                if future.done():  # cancelled before it could leave
                    return
                handle = self._client.submit_task(
                    function_id, args, kwargs, endpoint_id=self.endpoint_id, walltime_s=walltime_s
                )
                future.handle = handle
        except Exception as exc:
            future.fail(exc)
            return
        handle.future.add_done_callback(functools.partial(self._settled, future, handle))

    def _settled(self, future: TaskFuture[Any], handle: TaskHandle, _: object) -> None:
        if not handle.future.cancelled():
            handle.future.exception()  # retrieved here: the TaskFuture carries the outcome
        if handle.task_id is not None:
            future.task_id = handle.task_id
        if handle.outcome is not None:
            future.resolve(handle.outcome)
        elif handle.future.cancelled():
            future.cancel_locally()
        elif (error := handle.future.exception()) is not None:
            future.fail(error)

    # -- cancelling ----------------------------------------------------------------------------

    def _cancel(self, future: TaskFuture[Any]) -> bool:
        """``TaskFuture.cancel``: withdraw the task if it has not left, else cancel it upstream."""
        with future.phase_lock:
            handle = future.handle
            if handle is None:  # still registering its function: it will never leave
                return future.cancel_locally()
        if handle.task_id is None:
            withdrawn = self._call_on_loop(handle.withdraw)
            if withdrawn:
                return future.cancel_locally()
            if self._on_loop():
                return False  # in flight; its id is not known yet and cannot be awaited here
            task_id = self._await_task_id(handle)
        else:
            task_id = handle.task_id
        if task_id is None:
            return False
        try:
            cancelled = self._sync.cancel(task_id)
        except FxBrokerError:
            return False
        if cancelled:
            future.task_id = task_id
            return future.cancel_locally()
        return False

    def _call_on_loop(self, fn: Callable[[], bool]) -> bool:
        if self._on_loop():
            return fn()

        async def call() -> bool:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def _await_task_id(self, handle: TaskHandle) -> str | None:
        """Wait for the submit request carrying ``handle`` to answer (or fail)."""
        coro = self._client.wait_sent(handle)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- reattaching ---------------------------------------------------------------------------

    def reload_tasks(self) -> list[TaskFuture[Any]]:
        """A future for every task of this Executor's task group, in submission order.

        Use it after a crash: ``Executor(endpoint_id, task_group_id=gid).reload_tasks()``.
        Tasks that already finished have their futures resolved when this returns (one
        ``batch_status`` request per 1,000 of them); the others resolve from the pushed
        results as they finish. A task whose record expired fails with ``ResultExpired``.
        Tasks this Executor already has a future for keep that future."""
        group = self.task_group_id
        if group is None:
            raise RuntimeError("reload_tasks() needs Executor(task_group_id=...)")
        tasks = self._group_tasks(group)
        finished = [t for t, state in tasks if state in _TERMINAL]
        outcomes: dict[str, _base.TaskOutcome] = {}
        for chunk in _base.chunks(finished):
            for task_id, info in self._sync.get_tasks(chunk).items():
                outcomes[task_id] = _base.info_outcome(info)
        futures: list[TaskFuture[Any]] = []
        watch: list[tuple[str, TaskFuture[Any]]] = []
        for task_id, state in tasks:
            with self._lock:
                known = self._by_task.get(task_id)
            if known is not None:
                futures.append(known)
                continue
            future: TaskFuture[Any] = TaskFuture(self._cancel)
            future.task_id = task_id
            self._track(future)
            with self._lock:
                self._by_task[task_id] = future
            if task_id in outcomes:
                future.resolve(outcomes[task_id])
            elif state is None:
                future.resolve(_base.expired_outcome(task_id))
            else:
                watch.append((task_id, future))
            futures.append(future)
        if watch:
            self._call_on_loop(lambda: self._watch(watch))
            self._settle_finished_meanwhile(watch)
        return futures

    def _settle_finished_meanwhile(self, watch: list[tuple[str, TaskFuture[Any]]]) -> None:
        """Tasks that finished between reading the group and watching them may have been
        pushed before the watch began (when the connection was already open); ask once."""
        futures = dict(watch)
        for chunk in _base.chunks(list(futures)):
            for task_id, info in self._sync.get_tasks(chunk).items():
                if info["state"] in _TERMINAL:
                    futures[task_id].resolve(_base.info_outcome(info))
                    self._loop.call_soon_threadsafe(self._client.results.unwatch, task_id)

    def _group_tasks(self, group: str) -> list[tuple[str, str | None]]:
        tasks: list[tuple[str, str | None]] = []
        for offset in itertools.count(0, wire.GROUP_PAGE_MAX):
            answer = self._sync.get_task_group(group, offset=offset, limit=wire.GROUP_PAGE_MAX)
            total, page = _base.parse_task_group_page(answer)
            tasks.extend(page)
            if not page or len(tasks) >= total:
                return tasks
        raise AssertionError("unreachable")

    def _watch(self, watch: list[tuple[str, TaskFuture[Any]]]) -> bool:
        for task_id, future in watch:
            handle = self._client.watch_task(task_id)
            future.handle = handle
            handle.future.add_done_callback(functools.partial(self._settled, future, handle))
        return True

    # -- mapping and closing -----------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[T]:
        """``fn`` over the iterables' items, results in order, as ``Executor.map``.

        All tasks are submitted before the first result is awaited (batched into few
        requests). ``progress`` draws a progress bar on standard error when it is a
        terminal (nothing otherwise). If the iteration stops early (an error, a timeout,
        the iterator dropped), the tasks not yet finished are cancelled."""
        futures = [self.submit(fn, *items) for items in zip(*iterables, strict=False)]
        return self.results_of(futures, timeout=timeout, progress=progress)

    def results_of(
        self,
        futures: Sequence[concurrent.futures.Future[T]],
        *,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """The results of ``futures`` (this Executor's), in order, as :meth:`map` yields them."""
        return self._results(futures, timeout, progress)

    def _results(
        self, futures: Sequence[concurrent.futures.Future[T]], timeout: float | None, progress: bool
    ) -> Iterator[T]:
        bar = Progress(len(futures), enabled=progress)

        def advance(f: concurrent.futures.Future[Any]) -> None:
            failed = not f.cancelled() and f.exception() is not None
            bar.advance(failed=int(failed))

        if bar.visible:
            for f in futures:
                f.add_done_callback(advance)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(reversed(futures))
        try:
            with bar:
                while pending:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield pending[-1].result(left)
                    pending.pop()
        finally:
            self._cancel_many([f for f in pending if not f.done()])

    def _cancel_many(self, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        """Stop waiting for every one of them and cancel their tasks: those still queued here
        never leave; those whose submit is in flight are cancelled upstream once it answers,
        with those already submitted (one request per 1,000; running ones are asked to stop).
        If the service cannot be reached within ``retry_for_s`` the futures are cancelled
        all the same."""
        ids = [f.task_id for f in futures if isinstance(f, TaskFuture) and f.task_id]
        in_flight = [
            f.handle
            for f in futures
            if isinstance(f, TaskFuture) and f.task_id is None and f.handle is not None
        ]
        for future in futures:
            if isinstance(future, TaskFuture):
                future.cancel_locally()  # withdraws it from the submit queue (_forget)
            else:
                future.cancel()
        if in_flight and not self._on_loop():
            ids += self._sent_ids(in_flight)
        with contextlib.suppress(FxBrokerError):
            self._sync.cancel_tasks(ids)

    def _sent_ids(self, handles: Sequence[TaskHandle]) -> list[str]:
        """The task ids of ``handles`` whose submit request left, once it answered."""

        async def sent() -> list[str | None]:
            return await asyncio.gather(*(self._client.wait_sent(h) for h in handles))

        try:
            ids = asyncio.run_coroutine_threadsafe(sent(), self._loop).result()
        except RuntimeError:  # the loop is already closed: nothing is in flight any more
            return []
        return [task_id for task_id in ids if task_id is not None]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more submissions and close the connections once every future is done.

        ``cancel_futures=True`` cancels every task not yet done, as :meth:`map` does when its
        iteration stops early: queued here, it never leaves; submitted (or in flight), it is
        cancelled upstream (one request per 1,000; those already running are asked to stop);
        and its future is cancelled, so nothing is left to wait for.

        Never hangs on a dead platform: once the web or ws service has been unreachable
        for ``retry_for_s``, the futures still waiting fail with
        :class:`~sdk.errors.ConnectionFailed` and the connections close.

        ``wait=True`` blocks until the remaining futures are done and the background thread
        has stopped; called from a future's callback (which runs on that thread) it returns
        at once instead of waiting on itself."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            futures = list(self._futures.values())
        if cancel_futures:
            self._cancel_many([f for f in futures if not f.done()])
        if first:
            asyncio.run_coroutine_threadsafe(self._close(futures), self._loop)
        if wait and not self._on_loop():
            self._thread.join()

    async def _close(self, futures: list[TaskFuture[Any]]) -> None:
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._client.aclose()
            if self._own_client:
                self._sync.close()
        finally:
            self._loop.stop()


@dataclasses.dataclass(slots=True)
class _Queued:
    """A submission waiting in the Executor's inbox for the loop to take it."""

    future: TaskFuture[Any]
    fn: Callable[..., Any] | None
    function_id: str | None
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    walltime_s: float | None


def _client_of(config: ClientConfig) -> Client:
    return Client(
        config.url,
        config.token,
        ws_url=config.ws_url,
        endpoint_id=config.endpoint_id,
        retry_for_s=config.retry_for_s,
        ca_file=config.ca_file,
    )
