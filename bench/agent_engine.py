"""``python -m bench.agent_engine``: no-op calls per second through the process engine alone.

No platform, no gateway: a :class:`~endpoint_agent.processes.ProcessEngine` with
``--workers`` spawned workers runs ``--tasks`` no-op calls in this process, held the way the
agent holds them (at most one per worker plus the engine's look-ahead at a time, topped up
as each ends). The figure is the engine's own ceiling, the hop the agent adds beside the
gateway's; it prints the median of ``--repeat`` runs with the pipe traffic of the last.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

from endpoint_agent.engines import run_one
from endpoint_agent.processes import PipeStats, ProcessEngine
from endpoint_agent.worker import Call, Outcome
from sdk.serialize import pack_payload
from sdk.states import TaskState

NOOP = "st\nnoop:def noop():\n    return None\n"


async def _sample(tasks: int, workers: int) -> tuple[float, PipeStats]:
    engine = ProcessEngine(workers)
    call = Call("noop", NOOP, pack_payload((), {}))
    try:
        for _ in range(workers):  # every worker up and holding the code
            await run_one(engine, call)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        submitted = ended = 0
        failed: list[Outcome] = []

        def top_up() -> None:
            nonlocal submitted
            room = workers + engine.lookahead - (submitted - ended)
            while room > 0 and submitted < tasks:
                engine.submit(f"t{submitted}", call, walltime_s=None, done=done)
                submitted += 1
                room -= 1

        def done(_: str, outcome: Outcome) -> None:
            nonlocal ended
            ended += 1
            if outcome.state != TaskState.SUCCESS:
                failed.append(outcome)
            if ended == tasks:
                finished.set_result(None)
            else:
                top_up()

        started = time.perf_counter()
        top_up()
        await finished
        elapsed = time.perf_counter() - started
        if failed:
            raise RuntimeError(f"{len(failed)} no-op calls failed: {failed[0]}")
        return tasks / elapsed, engine.stats
    finally:
        await engine.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_engine", description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000, help="calls per run (10,000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (3)")
    args = parser.parse_args(argv)
    samples = [asyncio.run(_sample(args.tasks, args.workers)) for _ in range(args.repeat)]
    rates = [rate for rate, _ in samples]
    stats = samples[-1][1]
    print(
        f"process engine x{args.workers}, {args.tasks} no-ops: "
        f"median {statistics.median(rates):,.0f}"
        f" tasks/s of {len(rates)} ({', '.join(f'{r:,.0f}' for r in rates)}); last run: "
        f"{stats.batches} batches, {stats.results} outcome messages, {stats.codes} code sends"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
