"""Fault injection into the platform as real processes (issue 10's table).

- ``postgres``: a private PostgreSQL cluster to stop and start (Redis: ``tests.private_redis``,
  or ``tests.private_cluster`` with ``FXBROKER_TEST_REDIS=cluster``; see ``test_faults``)
- ``platform``: ``fxbroker web|ws|endpoint start`` processes to kill and restart on their ports
- ``work``: the function the endpoint runs; it records each run, so a re-run is counted
- ``load``: the Executor and ``batch_run`` + polling styles under load, and their figures
- ``run``: one row: both loads, a fault in the middle, the figures (``results/faults.json``)
- ``client``: the client process the client-kill row kills
- ``test_faults``: the rows and what must hold after each
- ``__main__``: ``python -m tests.faults`` runs them and prints the table
"""
