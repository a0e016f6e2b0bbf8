"""The SQL side: the schema and one catalog per durable resource. Nothing here touches Redis.

:mod:`.models` (tables, ids, the naming convention), :mod:`.database` (the async engine),
:mod:`.functions`, :mod:`.endpoints`, :mod:`.task_groups` (catalogs with their in-process
caches), :mod:`.sharing` (who else may use a function or an endpoint).
"""
