"""``fxbroker demo``: start the platform, run a sample workload through all three client
styles, print results and throughput, and exit non-zero if any result is wrong."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fxbroker import AsyncClient, Client, Executor, TaskFailed, loops
from fxbroker.stack import DevStack, StackInfo, StackSettings
from fxbroker.workload import async_double, fail, square


@contextmanager
def running_stack(settings: StackSettings) -> Iterator[StackInfo]:
    """Run a :class:`DevStack` on a uvloop event loop in a background thread, as every
    long-running fxbroker process runs (asyncio's own loop ran the demo's polling and
    gather rows about a tenth slower)."""
    ready: concurrent.futures.Future[StackInfo] = concurrent.futures.Future()
    loop = loops.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with DevStack(settings) as stack:
                ready.set_result(stack.info)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(
        target=lambda: loop.run_until_complete(main()), name="fxbroker-stack", daemon=True
    )
    thread.start()
    try:
        yield ready.result(timeout=120)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()


@dataclass
class Row:
    style: str
    tasks: int
    seconds: float
    ok: bool

    def line(self) -> str:
        rate = self.tasks / self.seconds if self.seconds else 0.0
        verdict = "ok" if self.ok else "WRONG RESULTS"
        return f"  {self.style:<34} {self.tasks:>6} {self.seconds:>8.2f} {rate:>10.0f}  {verdict}"


def _timed(style: str, tasks: int, work: Callable[[], bool]) -> Row:
    start = time.perf_counter()
    ok = work()
    return Row(style, tasks, time.perf_counter() - start, ok)


def run_demo(settings: StackSettings, *, tasks: int = 1000) -> int:
    """Run the workload; 0 when every result was right."""
    with running_stack(settings) as info:
        print(f"platform up: web {info.url}, ws {info.ws_url}, Redis {info.redis_kind}", flush=True)
        rows = run_workload(info, tasks=tasks)
    print(f"\n  {'client style':<34} {'tasks':>6} {'seconds':>8} {'tasks/s':>10}")
    for row in rows:
        print(row.line())
    ok = all(r.ok for r in rows)
    print("\ndemo passed" if ok else "\ndemo FAILED", flush=True)
    return 0 if ok else 1


def run_workload(info: StackInfo, *, tasks: int) -> list[Row]:
    """The sample workload: square numbers three ways, then show a remote failure."""
    expected = [x * x for x in range(tasks)]
    rows: list[Row] = []
    with Client(url=info.url, token=info.token) as client:
        fid = client.register_function(square)
        eid = info.endpoint_id
        # One task first, as every bench sample does: the workers start, the function's code
        # reaches them, the connections open; the rows then time the client styles alone.
        client.wait([client.run(0, endpoint_id=eid, function_id=fid)], timeout_s=120)

        def polling() -> bool:
            batch = client.create_batch()
            for x in range(tasks):
                batch.add(fid, args=(x,))
            ids = client.batch_run(eid, batch)
            results = client.wait(ids, timeout_s=120)  # long polls: answered as results land
            return [results[t].get("result") for t in ids] == expected

        rows.append(_timed("Client: batch_run + polling", tasks, polling))

        async def pushed() -> bool:
            async with AsyncClient(url=info.url, token=info.token) as ac:
                values = await asyncio.gather(
                    *(ac.run(x, endpoint_id=eid, function_id=fid) for x in range(tasks))
                )
                doubled_id = await ac.register_function(async_double)
                doubled = await ac.run(21, endpoint_id=eid, function_id=doubled_id)
            return list(values) == expected and doubled == 42

        rows.append(_timed("AsyncClient: gather of run()", tasks, lambda: asyncio.run(pushed())))

        def executor() -> bool:
            with Executor(endpoint_id=eid, client=client) as ex:
                return list(ex.map(square, range(tasks), progress=True)) == expected

        rows.append(_timed("Executor: map", tasks, executor))

        with Executor(endpoint_id=eid, client=client) as ex:
            future = ex.submit(fail, 7)
            try:
                future.result(timeout=60)
                failed_ok = False
            except TaskFailed as exc:
                last = exc.remote_traceback.strip().splitlines()[-1]
                print(f"a remote failure comes back as TaskFailed: {last}", flush=True)
                failed_ok = isinstance(exc, ValueError) and exc.type_name == "ValueError"
        rows.append(Row("Executor: a function that raises", 1, 0.0, failed_ok))
    return rows
