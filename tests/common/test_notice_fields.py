"""What a completion notice carries: the task and state, plus the outcome when it is small."""

from __future__ import annotations

from dataclasses import dataclass

from sdk.messages import ExceptionRecord, error_record
from sdk.states import TaskState
from service_common.tasks.settle import INLINE_MAX_CHARS, notice_fields


@dataclass(frozen=True)
class Outcome:
    state: TaskState
    result: str | None = None
    exception: ExceptionRecord | None = None
    stdout: str = ""
    stderr: str = ""


def test_a_small_outcome_rides_in_its_notice() -> None:
    fields = notice_fields("t1", "success", Outcome(TaskState.SUCCESS, "11\n42", stdout="hi"))
    assert fields == {
        "task_id": "t1",
        "state": "success",
        "inline": "1",
        "result": "11\n42",
        "stdout": "hi",
    }
    failed = notice_fields("t2", "failed", Outcome(TaskState.FAILED, None, error_record("E", "m")))
    assert failed["inline"] == "1" and '"type": "E"' in failed["exception"]


def test_a_big_outcome_or_none_leaves_the_notice_naming_the_task_only() -> None:
    at_limit = Outcome(TaskState.SUCCESS, "x" * (INLINE_MAX_CHARS - 2), stderr="ab")
    assert notice_fields("t1", "success", at_limit)["inline"] == "1"
    over = Outcome(TaskState.SUCCESS, "x" * (INLINE_MAX_CHARS - 2), stderr="abc")
    assert notice_fields("t1", "success", over) == {"task_id": "t1", "state": "success"}
    assert notice_fields("t3", "success", None) == {"task_id": "t3", "state": "success"}
