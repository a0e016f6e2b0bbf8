"""The client process the client-kill row kills: it submits ``n`` tasks through an Executor
and ``n`` through ``batch_run``, prints one JSON line naming both task groups and their task
ids (in the order of x), then waits to be killed.

Usage: ``python -m tests.faults.client URL TOKEN WS_URL ENDPOINT RUNS N``.
"""

from __future__ import annotations

import json
import sys
import threading

from fxbroker import Client, Executor
from tests.faults.work import record_square

BATCH = 100


def main(argv: list[str]) -> None:
    url, token, ws_url, endpoint_id, runs, n_text = argv
    n = int(n_text)
    client = Client(url, token, ws_url=ws_url)
    ex = Executor(endpoint_id, client=client)
    futures = [ex.submit(record_square, "e", x, runs) for x in range(n)]
    ex.flush()
    function_id = client.register_function(record_square)
    polling_ids: list[str] = []
    for start in range(0, n, BATCH):
        batch = client.create_batch()
        for x in range(start, min(n, start + BATCH)):
            batch.add(function_id, args=("b", x, runs))
        polling_ids += client.batch_run(endpoint_id, batch)
    report = {
        "executor_group": ex.task_group_id,
        "executor_ids": [f.task_id for f in futures],
        "polling_group": client.task_group_id,
        "polling_ids": polling_ids,
    }
    print(json.dumps(report), flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1:])
