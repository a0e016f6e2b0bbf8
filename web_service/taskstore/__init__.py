"""The Redis side: tasks in flight and what the web service keeps beside them.

:mod:`.tasks` (queueing a batch, reading tasks and task groups back, function code for
agents), :mod:`.endpoint_state` (an endpoint's queue load, heartbeat and allow-list
mirror), :mod:`.cancel` (the cancel script and notices), :mod:`.idempotency` (the
Idempotency-Key records of submits), :mod:`.waiting` (long polls: reading tasks once any has
finished, woken by the process's shared stream watcher). Key names come from :mod:`sdk.keys`.
"""
