"""fxbroker's benchmarks: every speed claim as a figure anyone can rerun, beside its peers.

``python -m bench`` runs every workload against real Redis (``REDIS_URL``, else a private
``redis-server``) with fxbroker deployed as separate processes, and the same no-op through a
bare ``ProcessPoolExecutor``, Celery, RQ and arq; it prints a table (medians, ratios
fxbroker / peer, targets as PASS or FAIL) and writes it as JSON. See ``bench/README.md``.

Modules: :mod:`.settings` (counts), :mod:`.runner` (one run, interleaved repeats),
:mod:`.platform` (fxbroker's processes), :mod:`.fx_workloads` (fxbroker's side of each
workload), :mod:`.peers` (the peer protocol and the bare pool), :mod:`.peer_celery`,
:mod:`.peer_rq`, :mod:`.peer_arq`, :mod:`.tasks` (the functions every system runs),
:mod:`.services` (Redis and subprocesses), :mod:`.report` (medians, table, targets, JSON).
"""
