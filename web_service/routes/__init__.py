"""The HTTP surface: one module of routes per resource, the request bodies they parse and
the OpenAPI document that describes them.

:mod:`.meta` (whoami, info, health, readiness, metrics, the OpenAPI document),
:mod:`.functions`, :mod:`.endpoints`, :mod:`.submit` (the hot path), :mod:`.tasks` (tasks
and task groups), :mod:`.agents` (the one route an endpoint credential may call);
:mod:`.bodies` (reading and checking request bodies, pure), :mod:`.openapi` and
:mod:`.openapi_schemas` (the document, written by hand).
"""
