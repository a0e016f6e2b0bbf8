"""JSON Schemas of the request and response bodies, for the OpenAPI document.

They mirror :mod:`sdk.messages` and the parsers of :mod:`web_service.routes.bodies`: a request
body valid here is one the parsers accept (up to checks that need the database, such as
ownership), and every answer of the service validates against its response schema.
"""

from __future__ import annotations

from typing import Any

from sdk.states import TaskState
from service_common.tokens import ENDPOINT_CREDENTIAL_PREFIX
from web_service.routes.bodies import (
    MAX_LIST_ITEMS,
    MAX_NAME_LENGTH,
    MAX_STATUS_IDS,
    MAX_WALLTIME_S,
    NO_NUL,
)

Schema = dict[str, Any]

UUID: Schema = {"type": "string", "format": "uuid"}
TIMESTAMP: Schema = {"type": "number", "description": "Unix seconds"}
NULLABLE_TIMESTAMP: Schema = {**TIMESTAMP, "nullable": True}
NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": r"^[^\x00]*[^\s\x00][^\x00]*$",
    "description": "not blank, no NUL character",
}
TEXT: Schema = {"type": "string", "pattern": NO_NUL, "description": "no NUL character"}
CREDENTIAL: Schema = {
    "type": "string",
    "pattern": f"^{ENDPOINT_CREDENTIAL_PREFIX}",
    "description": "an endpoint credential: shown only in the answer that issued it",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Schema, *, required: list[str] | None = None) -> Schema:
    """An object with ``properties``; all required unless ``required`` says which."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _strings(min_items: int, max_items: int, items: Schema | None = None) -> Schema:
    return {
        "type": "array",
        "items": items or {"type": "string"},
        "minItems": min_items,
        "maxItems": max_items,
    }


def component_schemas(*, max_tasks_per_batch: int) -> dict[str, Schema]:
    states = [state.value for state in TaskState]
    exception = obj(
        {
            "type": {"type": "string"},
            "module": {"type": "string"},
            "message": {"type": "string"},
            "traceback": {"type": "string"},
            "pickled": {"type": "string", "description": "the exception, a serialized buffer"},
        }
    )
    task_info = obj(
        {
            "task_id": {"type": "string"},
            "state": {"type": "string", "enum": states},
            "endpoint_id": {"type": "string"},
            "function_id": {"type": "string"},
            "task_group_id": {"type": "string"},
            "created_at": NULLABLE_TIMESTAMP,
            "started_at": NULLABLE_TIMESTAMP,
            "completed_at": NULLABLE_TIMESTAMP,
            "result": {"type": "string", "description": "a serialized buffer"},
            "exception": ref("ExceptionRecord"),
            "stdout": {"type": "string", "description": "captured standard output (bounded)"},
            "stderr": {"type": "string", "description": "captured standard error (bounded)"},
        },
        required=[
            "task_id",
            "state",
            "endpoint_id",
            "function_id",
            "task_group_id",
            "created_at",
            "started_at",
            "completed_at",
        ],
    )
    function = obj(
        {
            "function_id": UUID,
            "function_name": {"type": "string"},
            "description": {"type": "string"},
            "created_at": TIMESTAMP,
            "owner_id": UUID,
            "owned": {"type": "boolean"},
            "public": {"type": "boolean"},
        }
    )
    endpoint = obj(
        {
            "endpoint_id": UUID,
            "name": {"type": "string"},
            "owner_id": UUID,
            "owned": {"type": "boolean"},
            "created_at": TIMESTAMP,
        }
    )
    cancel_result = obj(
        {
            "task_id": {"type": "string"},
            "state": {"type": "string"},
            "outcome": {"type": "string", "enum": ["cancelled", "interrupt_requested", "finished"]},
        }
    )
    task_ids = obj({"task_ids": _strings(1, MAX_STATUS_IDS)})
    nullable = {"nullable": True}
    return {
        "Error": obj(
            {
                "code": {"type": "string", "pattern": "^[A-Z0-9_]+$"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            }
        ),
        "ExceptionRecord": exception,
        "TaskInfo": task_info,
        "Function": function,
        "FunctionDetail": {
            "allOf": [function, obj({"function_code": {"type": "string"}}, required=[])]
        },
        "FunctionList": obj({"functions": {"type": "array", "items": ref("Function")}}),
        "FunctionRegistration": obj(
            {
                "function_name": NAME,
                "function_code": {
                    "type": "string",
                    "pattern": r"^(01|st)\n[^\x00]*$",
                    "description": "a serialized code buffer (strategy 01 or st)",
                },
                "description": TEXT,
            },
            required=["function_name", "function_code"],
        ),
        "FunctionId": obj({"function_id": UUID}),
        "FunctionSharing": obj(
            {"public": {"type": "boolean"}, "users": _strings(0, MAX_LIST_ITEMS, NAME)}
        ),
        "FunctionSharingAnswer": obj(
            {"function_id": UUID, "public": {"type": "boolean"}, "users": _strings(0, 100_000)}
        ),
        "Deleted": obj({"deleted": {"type": "boolean", "enum": [True]}}, required=["deleted"]),
        "Endpoint": endpoint,
        "EndpointRegistered": {
            "allOf": [
                endpoint,
                obj(
                    {"credential": {**CREDENTIAL, "description": "present when issued now"}},
                    required=[],
                ),
            ]
        },
        "EndpointDetail": {
            "allOf": [
                endpoint,
                obj(
                    {
                        "status": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "nullable": True,
                        },
                        "credential": {
                            **obj({"prefix": {"type": "string"}, "issued_at": TIMESTAMP}),
                            "nullable": True,
                            "description": "the owner's view of the live credential",
                        },
                    },
                    required=["status"],
                ),
            ]
        },
        "CredentialIssued": obj(
            {"endpoint_id": UUID, "credential": CREDENTIAL, "issued_at": TIMESTAMP}
        ),
        "CredentialRevoked": obj({"endpoint_id": UUID, "revoked": {"type": "boolean"}}),
        "EndpointSession": obj(
            {
                "endpoint_id": UUID,
                "name": {"type": "string"},
                "owner_id": UUID,
                "allowed_functions": {"type": "array", "items": UUID},
                "credential_prefix": {"type": "string"},
                "credential_issued_at": TIMESTAMP,
            }
        ),
        "EndpointList": obj({"endpoints": {"type": "array", "items": ref("Endpoint")}}),
        "EndpointRegistration": obj({"name": NAME}),
        "EndpointStatus": obj(
            {
                "endpoint_id": UUID,
                "online": {"type": "boolean"},
                "queued": {"type": "integer", "minimum": 0},
                "in_flight": {"type": "integer", "minimum": 0},
                "workers": {"type": "integer", **nullable},
                "running": {"type": "integer", **nullable},
                "capacity": {"type": "integer", **nullable},
                "last_heartbeat": NULLABLE_TIMESTAMP,
                "agent": {"type": "string", **nullable},
                "host": {"type": "string", **nullable},
                "version": {"type": "string", **nullable},
                "engine": {"type": "string", **nullable},
            }
        ),
        "EndpointStatuses": obj(
            {
                "now": {**TIMESTAMP, "description": "the service's clock"},
                "window_s": {"type": "integer", "description": "what finished counts over"},
                "bucket_s": {"type": "integer", "description": "one step of tasks_per_s"},
                "sample_tasks": {
                    "type": "integer",
                    "description": "the caller's newest tasks counted for finished",
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "allOf": [
                            ref("Endpoint"),
                            ref("EndpointStatus"),
                            obj(
                                {
                                    "finished": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "the caller's tasks it finished in "
                                        "the last window_s seconds",
                                    },
                                    "tasks_per_s": {
                                        "type": "array",
                                        "items": {"type": "number", "minimum": 0},
                                        "description": "finished per second, one number per "
                                        "bucket_s, oldest first; the last is the current one",
                                    },
                                }
                            ),
                        ]
                    },
                },
            }
        ),
        "UserNames": obj({"users": _strings(0, MAX_LIST_ITEMS, NAME)}),
        "EndpointSharingAnswer": obj({"endpoint_id": UUID, "users": _strings(0, 100_000)}),
        "AllowList": obj({"function_ids": _strings(0, MAX_LIST_ITEMS, UUID)}),
        "AllowListAnswer": obj(
            {"endpoint_id": UUID, "function_ids": _strings(0, MAX_LIST_ITEMS, UUID)}
        ),
        "SubmitRequest": obj(
            {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_tasks_per_batch,
                    "items": obj(
                        {
                            "function_id": {"type": "string"},
                            "payload": {"type": "string"},
                            "walltime_s": {
                                "type": "number",
                                "minimum": 0,
                                "exclusiveMinimum": True,
                                "maximum": MAX_WALLTIME_S,
                                "description": "The longest the task may run, in seconds; "
                                "past it the task fails with WalltimeExceeded.",
                            },
                        },
                        required=["function_id", "payload"],
                    ),
                },
                "task_group_id": {**UUID, "nullable": True},
            },
            required=["tasks"],
        ),
        "SubmitResponse": obj(
            {"task_group_id": UUID, "task_ids": {"type": "array", "items": UUID}}
        ),
        "TaskIds": task_ids,
        "BatchStatus": obj(
            {
                "tasks": {"type": "object", "additionalProperties": ref("TaskInfo")},
                "unknown": {"type": "array", "items": {"type": "string"}},
            }
        ),
        "CancelResult": cancel_result,
        "BatchCancel": obj(
            {
                "tasks": {"type": "object", "additionalProperties": ref("CancelResult")},
                "unknown": {"type": "array", "items": {"type": "string"}},
            }
        ),
        "TaskGroup": obj({"task_group_id": UUID, "created_at": TIMESTAMP}),
        "TaskGroupList": obj({"task_groups": {"type": "array", "items": ref("TaskGroup")}}),
        "TaskGroupDetail": obj(
            {
                "task_group_id": UUID,
                "created_at": TIMESTAMP,
                "total": {"type": "integer", "minimum": 0},
                "task_ids": {"type": "array", "items": UUID},
                "tasks": {
                    "type": "array",
                    "items": obj(
                        {
                            "task_id": UUID,
                            "state": {"type": "string", "enum": [*states, None], **nullable},
                        }
                    ),
                },
            }
        ),
        "WhoAmI": obj({"user_id": UUID, "name": {"type": "string"}}),
        "Info": obj({"ws_url": {"type": "string"}, "version": {"type": "string"}}),
        "OpenAPI": {"type": "object"},
        "Health": obj(
            {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "failing": {"type": "array", "items": {"type": "string"}},
            },
            required=["status"],
        ),
    }
