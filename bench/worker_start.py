"""``python -m bench.worker_start``: how long an agent worker process takes to start.

Each sample makes a one-worker :class:`~endpoint_agent.processes.ProcessEngine` (a spawned
process that imports the worker module) and times it until its first no-op call has come back,
then closes it. What the worker imports at start dominates the figure, so it shows the cost of
the packages the worker module pulls in. Prints the median of ``--repeat`` samples in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

from sdk.serialize import pack_payload, serialize


def _noop() -> None:
    return None


async def _sample() -> float:
    from endpoint_agent.engines import run_one
    from endpoint_agent.processes import ProcessEngine
    from endpoint_agent.worker import Call

    call = Call(function_id="noop", code=serialize(_noop), payload=pack_payload((), {}))
    started = time.perf_counter()
    engine = ProcessEngine(1)
    try:
        await run_one(engine, call)
        return time.perf_counter() - started
    finally:
        await engine.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_start", description=__doc__)
    parser.add_argument("--repeat", type=int, default=9, help="samples (default 9)")
    args = parser.parse_args(argv)
    samples = [asyncio.run(_sample()) for _ in range(args.repeat)]
    print(
        f"worker start + first call: median {statistics.median(samples) * 1000:.0f} ms "
        f"of {len(samples)} (min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
