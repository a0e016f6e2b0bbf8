"""``python -m bench``: run the benchmarks, print the table, write the JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.runner import WORKLOADS, main_run
from bench.settings import BenchSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fxbroker benchmarks beside a bare ProcessPoolExecutor, Celery, RQ and arq "
        "(REDIS_URL, else a private redis-server; --redis-cluster: a private Redis Cluster).",
    )
    add = parser.add_argument
    add("--repeat", type=int, default=None, help="samples per figure, median shown (default 3)")
    add("--quick", action="store_true", help="tiny counts, one repeat: every row, no meaning")
    add("--json", type=Path, default=Path("bench/results.json"), help="where the JSON goes")
    add("--database-url", default=None, help="SQL of the web service (default: own SQLite file)")
    add("--redis-cluster", action="store_true",
        help="run on a private Redis Cluster of 3 masters (REDIS_URL is not used)")  # fmt: skip
    add("--only", default="", help=f"comma-separated workloads, of: {', '.join(WORKLOADS)}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = frozenset(w.strip() for w in args.only.split(",") if w.strip())
    unknown = sorted(only - set(WORKLOADS))
    if unknown:
        build_parser().error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    overrides: dict[str, object] = {
        "redis_url": None if args.redis_cluster else BenchSettings.redis_url_from_env(),
        "redis_cluster": args.redis_cluster,
        "database_url": args.database_url,
        "json_path": args.json,
        "only": only,
    }
    if args.repeat is not None:
        overrides["repeat"] = args.repeat
    settings = (BenchSettings.quick_run if args.quick else BenchSettings.full)(**overrides)
    return main_run(settings)


if __name__ == "__main__":
    sys.exit(main())
