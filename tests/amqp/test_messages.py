"""Outcomes as that SDK's Result messages (pure): read back with its own ``messagepack``."""

from __future__ import annotations

import json

from globus_compute_common import messagepack

from amqp_publisher.messages import VERSION_BYTE, Outcome, outcome_of, result_body
from sdk.serialize import deserialize, serialize


def test_a_success_carries_the_serialized_result_and_only_the_fields_that_sdk_knows() -> None:
    body = result_body(Outcome(task_id="6d1e0b8e-0000-4000-8000-000000000001", state="success",
                               result=serialize([1, 2])))  # fmt: skip
    assert body.startswith(VERSION_BYTE)
    envelope = json.loads(body[1:])
    assert set(envelope) == {"message_type", "data"}
    assert set(envelope["data"]) == {"task_id", "data", "details", "error_details", "task_statuses"}
    result = messagepack.unpack(body)
    assert not result.is_error and deserialize(result.data) == [1, 2]


def test_a_failure_without_a_traceback_and_an_expired_outcome_are_errors_that_say_so() -> None:
    record = {"type": "KeyError", "module": "builtins", "message": "'k'", "traceback": ""}
    failed = messagepack.unpack(
        result_body(outcome_of("6d1e0b8e-0000-4000-8000-000000000002",
                               {"state": "failed", "exception": json.dumps(record)}))
    )  # fmt: skip
    assert failed.is_error and failed.data == "KeyError: 'k'"
    expired = messagepack.unpack(
        result_body(outcome_of("6d1e0b8e-0000-4000-8000-000000000003", {}))
    )
    assert expired.is_error and expired.error_details.code == "ResultUnavailable"
    assert expired.data.startswith("ResultUnavailable")
