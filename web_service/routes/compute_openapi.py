"""The Globus Compute routes (``/v2``, ``/v3`` and the OAuth2 token route) in the OpenAPI
document: their paths and the schemas of their bodies, merged into
:func:`web_service.routes.openapi.build_openapi`'s document.

The schemas say what :mod:`web_service.routes.compute_v2`, :mod:`~web_service.routes.compute_v3`
and :mod:`~web_service.routes.oauth` answer; the Globus Compute SDK reads only some of each
document's fields (``docs`` of that SDK are the authority on which).
"""

from __future__ import annotations

from collections.abc import Callable

from web_service.routes.bodies import MAX_LIST_ITEMS
from web_service.routes.compute_documents import IDENTIFIER, RESULT_SERIALIZERS
from web_service.routes.openapi_schemas import CREDENTIAL, NAME, TEXT, UUID, Schema, obj, ref

FORM = "application/x-www-form-urlencoded"
COUNT: Schema = {"type": "integer", "minimum": 0}
ONLINE: Schema = {"type": "string", "enum": ["online", "offline"]}
UUIDS: Schema = {"type": "array", "items": UUID}


PACKED_CODE_FORMAT = "globus-compute-packed-code"
"""The ``format`` of a ``function_code`` the Globus Compute SDK serialized: one buffer packed
as ``<length>\\n<buffer>``, the buffer of strategy ``01``, ``st``, ``sd`` or ``12``."""


def compute_schemas(*, max_tasks_per_batch: int, amqp: bool) -> dict[str, Schema]:
    """``amqp``: whether the service publishes results to RabbitMQ (``create_queue``)."""
    endpoint = obj(
        {
            "uuid": UUID,
            "name": {"type": "string"},
            "display_name": {"type": "string"},
            "owner": UUID,
            "multi_user": {"type": "boolean"},
            "public": {"type": "boolean"},
        }
    )
    return {
        "ComputeVersion": obj(
            {
                "api": {"type": "string"},
                "min_sdk_version": {"type": "string"},
                "min_ep_version": {"type": "string"},
            }
        ),
        "ComputeFunctionRegistration": {
            "oneOf": [
                obj(
                    {
                        "function_name": NAME,
                        "function_code": {
                            "type": "string",
                            "format": PACKED_CODE_FORMAT,
                            "description": "one code buffer packed as <length>\\n<buffer>, "
                            "its strategy 01, st, sd or 12 (AllCodeStrategies)",
                        },
                        "serialized": {"type": "boolean", "enum": [True], "default": True},
                        "description": {**TEXT, "nullable": True},
                    },
                    required=["function_name", "function_code"],
                ),
                obj(
                    {
                        "function_name": {
                            **NAME,
                            "pattern": IDENTIFIER,
                            "description": "the source's function name",
                        },
                        "function_code": {**TEXT, "description": "the function's source"},
                        "serialized": {"type": "boolean", "enum": [False]},
                        "description": {**TEXT, "nullable": True},
                    },
                    required=["function_name", "function_code", "serialized"],
                ),
            ]
        },
        "ComputeFunctionId": obj({"function_uuid": UUID}),
        "ComputeFunction": obj(
            {
                "function_uuid": UUID,
                "function_name": {"type": "string"},
                "description": {"type": "string"},
                "public": {"type": "boolean"},
                "owner": UUID,
                "function_code": {"type": "string", "description": "for its owner only"},
            },
            required=["function_uuid", "function_name", "description", "public", "owner"],
        ),
        "ComputeFunctionDeleted": obj({"function_uuid": UUID, "deleted": {"type": "boolean"}}),
        "ComputeEndpoint": endpoint,
        "ComputeEndpointList": {"type": "array", "items": endpoint},
        "ComputeEndpointDetail": {
            "allOf": [
                endpoint,
                obj({"status": ONLINE, "endpoint_version": {"type": "string", "nullable": True}}),
            ]
        },
        "ComputeEndpointStatus": obj(
            {
                "status": ONLINE,
                "details": obj(
                    {
                        "total_workers": COUNT,
                        "idle_workers": COUNT,
                        "pending_tasks": COUNT,
                        "outstanding_tasks": COUNT,
                        "managers": COUNT,
                    }
                ),
            }
        ),
        "ComputeEndpointDeleted": obj({"endpoint_id": UUID, "deleted": {"type": "boolean"}}),
        "ComputeEndpointRegistration": obj(
            {
                "endpoint_name": NAME,
                "allowed_functions": {**UUIDS, "maxItems": MAX_LIST_ITEMS, "nullable": True},
            },
            required=["endpoint_name"],
        ),
        "ComputeEndpointRegistered": obj(
            {
                "endpoint_id": UUID,
                "name": {"type": "string"},
                "warnings": {"type": "array", "items": {"type": "string"}},
                "credential": CREDENTIAL,
            },
            required=["endpoint_id", "name", "warnings"],
        ),
        "ComputeEndpointLock": obj(
            {
                "endpoint_id": UUID,
                "lock_expiration_timestamp": {"type": "string", "nullable": True},
            }
        ),
        "ComputeAllowList": obj(
            {"endpoint_id": UUID, "restricted": {"type": "boolean"}, "functions": UUIDS}
        ),
        "ComputeSubmitRequest": obj(
            {
                "tasks": {
                    "type": "object",
                    "description": f"function id (a uuid) -> payloads; {max_tasks_per_batch} "
                    "in all (more: 422); a key that is not a function's id answers 404",
                    "minProperties": 1,
                    "maxProperties": max_tasks_per_batch,
                    "additionalProperties": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": max_tasks_per_batch,
                    },
                },
                "task_group_id": {**UUID, "nullable": True},
                "create_queue": {
                    "type": "boolean",
                    "default": False,
                    **({} if amqp else {"enum": [False]}),
                    "description": "declare the task group's AMQP queue (the Executor's); "
                    "only where the service is configured with FXBROKER_AMQP_URL",
                },
                "result_serializers": {
                    "type": "array",
                    "items": {"type": "string", "enum": sorted(RESULT_SERIALIZERS)},
                },
            },
            required=["tasks"],
        ),
        "ComputeSubmitResponse": obj(
            {
                "request_id": UUID,
                "task_group_id": UUID,
                "endpoint_id": UUID,
                "tasks": {"type": "object", "additionalProperties": UUIDS},
            }
        ),
        "ComputeTask": obj(
            {
                "task_id": UUID,
                "status": {"type": "string"},
                "completion_t": {"type": "string", "description": "absent while pending"},
                "result": {"type": "string"},
                "exception": {"type": "string", "description": "the remote traceback"},
            },
            required=["task_id", "status"],
        ),
        "ComputeBatchStatus": obj(
            {
                "response": {"type": "string", "enum": ["batch"]},
                "results": {"type": "object", "additionalProperties": ref("ComputeTask")},
            }
        ),
        "ComputeTaskGroup": obj(
            {
                "taskgroup_id": UUID,
                "create_websockets_queue": {"type": "boolean"},
                "tasks": {"type": "array", "items": obj({"id": UUID})},
            }
        ),
        "ComputeAmqpConnection": obj(
            {"queue_prefix": {"type": "string"}, "connection_url": {"type": "string"}}
        ),
        "OAuthTokenRequest": obj(
            {
                "grant_type": {"type": "string", "enum": ["client_credentials"]},
                "scope": {"type": "string"},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
            },
            required=["grant_type"],
        ),
        "OAuthRevokeRequest": obj(
            {
                "token": {"type": "string", "minLength": 1},
                "token_type_hint": {"type": "string"},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
            },
            required=["token"],
        ),
        "OAuthRevoked": obj({"active": {"type": "boolean", "enum": [False]}}),
        "OAuthToken": obj(
            {
                "access_token": {"type": "string"},
                "token_type": {"type": "string", "enum": ["Bearer"]},
                "expires_in": {"type": "integer", "minimum": 1},
                "resource_server": {"type": "string"},
                "scope": {"type": "string"},
                "state": {"type": "string"},
                "other_tokens": {"type": "array", "items": {}},
            }
        ),
    }


def compute_paths(
    op: Callable[..., Schema], path_id: Callable[[str], Schema], idempotency_key: Schema
) -> dict[str, dict[str, Schema]]:
    """The operations of the Globus Compute routes, built with the document's ``op``."""
    fid, eid, tid, gid = (
        path_id("function_id"),
        path_id("endpoint_id"),
        path_id("task_id"),
        path_id("task_group_id"),
    )
    service = {"name": "service", "in": "query", "required": False, "schema": {"type": "string"}}
    role = {
        "name": "role",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["owner", "any"], "default": "owner"},
    }
    token_op = op("OAuth2 client-credentials grant (Globus Compute SDK login)", "OAuthToken")
    token_op["requestBody"] = {
        "required": True,
        "content": {FORM: {"schema": ref("OAuthTokenRequest")}},
    }
    token_op["security"] = [{"clientBasic": []}, {}]
    del token_op["responses"]["429"]  # it checks its own client credentials, unlimited
    token_op["responses"]["401"]["description"] = "invalid_client: unknown or revoked ones"
    revoke_op = op("OAuth2 token revocation (Globus Compute SDK logout)", "OAuthRevoked")
    revoke_op["requestBody"] = {
        "required": True,
        "content": {FORM: {"schema": ref("OAuthRevokeRequest")}},
    }
    revoke_op["security"] = [{"clientBasic": []}, {}]
    del revoke_op["responses"]["429"]  # the same client credentials as the grant, unlimited
    revoke_op["responses"]["401"]["description"] = "invalid_client: unknown or revoked ones"
    return {
        "/v2/version": {
            "get": op("Globus Compute: versions", "ComputeVersion", params=[service], public=True)
        },
        "/v2/oauth2/token": {"post": token_op},
        "/v2/oauth2/token/revoke": {"post": revoke_op},
        "/v2/functions/{function_id}": {
            "get": op("Globus Compute: a function", "ComputeFunction", params=[fid]),
            "delete": op(
                "Globus Compute: delete a function", "ComputeFunctionDeleted", params=[fid]
            ),
        },
        "/v2/endpoints": {
            "get": op("Globus Compute: endpoints", "ComputeEndpointList", params=[role]),
        },
        "/v2/endpoints/{endpoint_id}": {
            "get": op("Globus Compute: an endpoint", "ComputeEndpointDetail", params=[eid]),
            "delete": op(
                "Globus Compute: delete an endpoint", "ComputeEndpointDeleted", params=[eid]
            ),
        },
        "/v2/endpoints/{endpoint_id}/status": {
            "get": op("Globus Compute: endpoint status", "ComputeEndpointStatus", params=[eid]),
        },
        "/v2/tasks/{task_id}": {"get": op("Globus Compute: a task", "ComputeTask", params=[tid])},
        "/v2/batch_status": {
            "post": op("Globus Compute: tasks", "ComputeBatchStatus", body="TaskIds"),
        },
        "/v2/taskgroup/{task_group_id}": {
            "get": op("Globus Compute: a task group", "ComputeTaskGroup", params=[gid]),
        },
        "/v2/get_amqp_result_connection_url": {
            "get": op("Globus Compute: the Executor's AMQP connection", "ComputeAmqpConnection"),
        },
        "/v3/functions": {
            "post": op(
                "Globus Compute: register a function",
                "ComputeFunctionId",
                body="ComputeFunctionRegistration",
            ),
        },
        "/v3/endpoints": {
            "post": op(
                "Globus Compute: register an endpoint",
                "ComputeEndpointRegistered",
                body="ComputeEndpointRegistration",
            ),
        },
        "/v3/endpoints/{endpoint_id}": {
            "put": op(
                "Globus Compute: register an endpoint again",
                "ComputeEndpointRegistered",
                params=[eid],
                body="ComputeEndpointRegistration",
            ),
        },
        "/v3/endpoints/{endpoint_id}/lock": {
            "post": op("Globus Compute: stop_endpoint", "ComputeEndpointLock", params=[eid]),
        },
        "/v3/endpoints/{endpoint_id}/allowed_functions": {
            "get": op("Globus Compute: the allow-list", "ComputeAllowList", params=[eid]),
        },
        "/v3/endpoints/{endpoint_id}/submit": {
            "post": op(
                "Globus Compute: queue tasks",
                "ComputeSubmitResponse",
                params=[eid, idempotency_key],
                body="ComputeSubmitRequest",
            ),
        },
    }
