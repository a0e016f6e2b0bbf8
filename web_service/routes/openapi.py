"""The OpenAPI 3.0 document of the service, served at ``GET /v1/openapi.json`` (no token); the
Globus Compute routes come from :mod:`web_service.routes.compute_openapi`.

Written by hand from the routes, so it says exactly what they do: each operation lists its
parameters, its body and the schema of its success answer; every other answer is an
``Error`` (``default`` response), which is what the service sends for anything but success.
A test runs schemathesis against the served document and checks every answer against it.
"""

from __future__ import annotations

from typing import Any

from web_service.routes.bodies import (
    DEFAULT_GROUP_PAGE_LIMIT,
    DEFAULT_PAGE_LIMIT,
    MAX_GROUP_PAGE_LIMIT,
    MAX_OFFSET,
    MAX_PAGE_LIMIT,
)
from web_service.routes.compute_openapi import compute_paths, compute_schemas
from web_service.routes.openapi_schemas import Schema, component_schemas, ref
from web_service.settings import WebSettings
from web_service.taskstore.waiting import MAX_WAIT_S

JSON = "application/json"


def _page(default: int, maximum: int, minimum: int = 1) -> list[Schema]:
    limit = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": limit,
        },
        {
            "name": "offset",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
    ]


PAGE = _page(DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT)
WAIT_S: Schema = {
    "name": "wait_s",
    "in": "query",
    "required": False,
    "description": (
        "long poll: answer as soon as any of the tasks is terminal, else after this many "
        "seconds with their current states (0: at once)"
    ),
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
}
IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retry with the same key answers the same task ids and queues nothing",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}


ERRORS = {
    "400": "BAD_REQUEST: the body is missing or is not JSON",
    "401": "UNAUTHORIZED: no token, or an unknown, revoked or expired one",
    "404": "<KIND>_NOT_FOUND: no such object, or none the caller may use",
    "413": "PAYLOAD_TOO_LARGE: the body is over the service's limit",
    "422": "VALIDATION_ERROR: a field or parameter the service cannot use",
    "429": "RATE_LIMITED: too many requests; retry after Retry-After",
    "503": "SERVICE_UNAVAILABLE: Redis or SQL is away; retry after Retry-After",
}
"""The errors most operations give, listed on those that give them; the ``default`` answer
(also an ``Error``) covers the rest, each operation's own (403, 409, 410, ...) and 500."""


def _errors(*, body: bool, params: list[Schema], public: bool) -> list[str]:
    statuses = [] if public else ["401", "429", "503"]
    if any(param["in"] == "path" for param in params):
        statuses.append("404")
    if body:
        statuses += ["400", "413", "422"]
    elif any(param["in"] != "path" and param["schema"] != {"type": "string"} for param in params):
        statuses.append("422")  # a parameter with a constraint the route checks
    return sorted(statuses)


def _path_id(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def op(
    summary: str,
    answer: str,
    *,
    body: str | None = None,
    params: list[Schema] | None = None,
    public: bool = False,
    security: str | None = None,
    answer_type: str = JSON,
    also: dict[str, str] | None = None,
) -> Schema:
    """One operation: its success answer is ``answer`` (a component), anything else Error
    (the common ones listed by status, see ``ERRORS``).

    ``security`` names the scheme when it is not the default (a user's bearer token)."""
    content: Schema = (
        {answer_type: {"schema": ref(answer)}}
        if answer_type == JSON
        else {answer_type: {"schema": {"type": "string"}}}
    )
    operation: Schema = {
        "summary": summary,
        "responses": {
            "200": {"description": "success", "content": content},
            "default": {
                "description": "an error (4xx: the client can fix it; 5xx: a server fault)",
                "content": {JSON: {"schema": ref("Error")}},
            },
        },
    }
    for status in _errors(body=body is not None, params=params or [], public=public):
        operation["responses"][status] = {
            "description": ERRORS[status],
            "content": {JSON: {"schema": ref("Error")}},
        }
    for status, component in (also or {}).items():
        operation["responses"][status] = {
            "description": component,
            "content": {JSON: {"schema": ref(component)}},
        }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    if public:
        operation["security"] = []
    elif security is not None:
        operation["security"] = [{security: []}]
    return operation


def build_openapi(settings: WebSettings, *, version: str) -> dict[str, Any]:
    """The document for a service running with ``settings`` (its limits are in the schemas)."""
    fid, eid, tid, gid = (
        _path_id("function_id"),
        _path_id("endpoint_id"),
        _path_id("task_id"),
        _path_id("task_group_id"),
    )
    group_page = _page(DEFAULT_GROUP_PAGE_LIMIT, MAX_GROUP_PAGE_LIMIT, minimum=0)
    paths: dict[str, Any] = {
        "/healthz": {"get": op("The process is up", "Health", public=True)},
        "/readyz": {
            "get": op(
                "SQL and Redis answer (else 503 naming which)",
                "Health",
                public=True,
                also={"503": "Health"},
            )
        },
        "/metrics": {"get": op("Prometheus metrics", "", public=True, answer_type="text/plain")},
        "/v1/openapi.json": {"get": op("This document", "OpenAPI", public=True)},
        "/v1/whoami": {"get": op("The token's owner", "WhoAmI")},
        "/v1/info": {"get": op("The push service's URL and the version", "Info")},
        "/v1/functions": {
            "post": op(
                "Register a function (same code, same id)",
                "FunctionId",
                body="FunctionRegistration",
            ),
            "get": op(
                "The caller's functions and those shared with them", "FunctionList", params=PAGE
            ),
        },
        "/v1/functions/{function_id}": {
            "get": op("A function (its code for the owner)", "FunctionDetail", params=[fid]),
            "delete": op("Delete a function; queued tasks still run", "Deleted", params=[fid]),
        },
        "/v1/functions/{function_id}/sharing": {
            "get": op("Who may use the function", "FunctionSharingAnswer", params=[fid]),
            "put": op(
                "Replace who may use the function",
                "FunctionSharingAnswer",
                params=[fid],
                body="FunctionSharing",
            ),
        },
        "/v1/endpoints": {
            "post": op(
                "Register an endpoint (same name, same id; a new one's credential, shown once)",
                "EndpointRegistered",
                body="EndpointRegistration",
            ),
            "get": op(
                "The caller's endpoints and those shared with them", "EndpointList", params=PAGE
            ),
        },
        "/v1/endpoints/status": {
            "get": op(
                "Each endpoint's status, load and what it finished lately (fxbroker status)",
                "EndpointStatuses",
                params=PAGE,
            ),
        },
        "/v1/endpoints/{endpoint_id}": {
            "get": op("An endpoint and its heartbeat", "EndpointDetail", params=[eid]),
            "delete": op("Delete an endpoint", "Deleted", params=[eid]),
        },
        "/v1/endpoints/{endpoint_id}/status": {
            "get": op("Online or not, capacity and load", "EndpointStatus", params=[eid]),
        },
        "/v1/endpoints/{endpoint_id}/sharing": {
            "get": op("Who may use the endpoint", "EndpointSharingAnswer", params=[eid]),
            "put": op(
                "Replace who may use the endpoint",
                "EndpointSharingAnswer",
                params=[eid],
                body="UserNames",
            ),
        },
        "/v1/endpoints/{endpoint_id}/allowed_functions": {
            "get": op(
                "The endpoint's allow-list (empty: any function)", "AllowListAnswer", params=[eid]
            ),
            "put": op("Replace the allow-list", "AllowListAnswer", params=[eid], body="AllowList"),
        },
        "/v1/endpoints/{endpoint_id}/credential": {
            "post": op(
                "Issue the endpoint a new credential (shown once); the old one stops working",
                "CredentialIssued",
                params=[eid],
            ),
            "delete": op("Revoke the endpoint's credential", "CredentialRevoked", params=[eid]),
        },
        "/v1/endpoint_session": {
            "get": op(
                "The endpoint an agent's credential opens (the gateway asks at its handshake)",
                "EndpointSession",
                security="endpointCredential",
            ),
        },
        "/v1/endpoints/{endpoint_id}/submit": {
            "post": op(
                "Queue a batch of tasks",
                "SubmitResponse",
                params=[eid, IDEMPOTENCY_KEY],
                body="SubmitRequest",
            ),
        },
        "/v1/tasks/batch_status": {
            "post": op("Up to 1000 tasks at once", "BatchStatus", body="TaskIds", params=[WAIT_S]),
        },
        "/v1/tasks/cancel": {"post": op("Cancel up to 1000 tasks", "BatchCancel", body="TaskIds")},
        "/v1/tasks/{task_id}": {"get": op("One task", "TaskInfo", params=[tid, WAIT_S])},
        "/v1/tasks/{task_id}/cancel": {"post": op("Cancel one task", "CancelResult", params=[tid])},
        "/v1/task_groups": {"get": op("The caller's task groups", "TaskGroupList", params=PAGE)},
        "/v1/task_groups/{task_group_id}": {
            "get": op(
                "A page of a group's tasks and their states",
                "TaskGroupDetail",
                params=[gid, *group_page],
            ),
        },
        **compute_paths(op, _path_id, IDEMPOTENCY_KEY),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "fxbroker", "version": version},
        "paths": paths,
        "components": {
            "schemas": {
                **component_schemas(max_tasks_per_batch=settings.max_tasks_per_batch),
                **compute_schemas(
                    max_tasks_per_batch=settings.max_tasks_per_batch,
                    amqp=bool(settings.amqp_url),
                ),
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a user's API token (fxb_...)",
                },
                "clientBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "an OAuth2 client id and secret (fxbroker user "
                    "client-credentials NAME), only on /v2/oauth2/token",
                },
                "endpointCredential": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an endpoint credential (fxep_...): opens only "
                    "/v1/endpoint_session, and is refused on every other route",
                },
            },
        },
        "security": [{"bearer": []}],
    }
