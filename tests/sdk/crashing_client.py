"""A client process for ``test_reload``: it submits tasks through Executors, reports their
task group and ids on one line of stdout, then waits to be killed.

Usage: ``python -m tests.sdk.crashing_client URL TOKEN WS_URL ENDPOINT LATER_ENDPOINT``:
ten tasks go to ENDPOINT, five more into the same task group on LATER_ENDPOINT."""

from __future__ import annotations

import json
import sys
import threading

from fxbroker import Client, Executor
from tests.sdk.workload import square


def main(argv: list[str]) -> None:
    url, token, ws_url, endpoint_id, later_endpoint_id = argv
    client = Client(url, token, ws_url=ws_url)
    first = Executor(endpoint_id, client=client)
    futures = [first.submit(square, i) for i in range(10)]
    first.flush()
    group = first.task_group_id
    later = Executor(later_endpoint_id, client=client, task_group_id=group)
    futures += [later.submit(square, i) for i in range(10, 15)]
    later.flush()
    print(json.dumps({"task_group_id": group, "task_ids": [f.task_id for f in futures]}))
    sys.stdout.flush()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1:])
