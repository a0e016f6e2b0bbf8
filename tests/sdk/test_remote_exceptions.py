"""Remote exceptions rebuilt as their own type, and the fallbacks to TaskFailed (pure code)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from fxbroker import TaskFailed
from sdk import _base
from sdk.messages import (
    exception_record,
    hash_seconds,
    parse_exception,
    remote_exception,
    task_created_at,
    task_info,
)


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: unpickling calls ``NeedsTwoArgs(message)``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not today")


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_remote_exception_comes_back_as_its_own_type() -> None:
    record = exception_record(raised(KeyError("missing")))
    parsed = parse_exception(json.dumps(record))
    assert parsed == record  # ``pickled`` survives the task hash
    error = remote_exception("t9", "failed", parsed)
    remote: Any = error
    assert remote.task_id == "t9" and "KeyError: 'missing'" in remote.remote_traceback
    assert isinstance(error, KeyError) and error.args == ("missing",)
    assert isinstance(error, TaskFailed)  # ``except TaskFailed`` catches every remote failure
    assert type(error).__name__ == "KeyError" and str(error) == "'missing'"
    assert "Remote traceback of task t9" in error.__notes__[0]
    # the dual class exists only in this process: it pickles as the remote type
    assert type(pickle.loads(pickle.dumps(error))) is KeyError


@pytest.mark.parametrize(
    "exc",
    [NeedsTwoArgs("a", "b"), SystemExit(3), KeyboardInterrupt(), StopIteration(1)],
    ids=["not-rebuildable", "system-exit", "keyboard-interrupt", "stop-iteration"],
)
def test_what_cannot_or_must_not_be_raised_here_is_task_failed(exc: BaseException) -> None:
    record = exception_record(raised(exc))
    error = remote_exception("t1", "failed", record)
    assert isinstance(error, TaskFailed)
    assert error.type_name == type(exc).__qualname__ and error.remote_traceback


def test_an_exception_that_does_not_pickle_is_still_described() -> None:
    record = exception_record(raised(Unpicklable("odd")))
    assert "pickled" not in record and record["message"] == "odd"
    error = remote_exception("t2", "failed", record)
    assert isinstance(error, TaskFailed) and error.message == "odd"


def test_a_corrupt_pickle_falls_back_to_task_failed() -> None:
    record = exception_record(raised(ValueError("v")))
    record["pickled"] = "00\nbm90IGEgcGlja2xl\n"
    assert isinstance(remote_exception("t3", "failed", record), TaskFailed)


def test_a_cancelled_task_is_task_failed_whatever_its_record() -> None:
    record = exception_record(raised(ValueError("v")))
    error = remote_exception("t4", "cancelled", record)
    assert isinstance(error, TaskFailed) and error.state == "cancelled"


def test_task_times_read_as_seconds_and_the_creation_time_from_the_id() -> None:
    # 0x019ae646f000 ms = 1764800000.0 s; 0x800 / 4096 of a millisecond = 0.5 ms
    task_id = "019ae646-f000-7800-8000-000000000000"
    info = task_info(task_id, {"state": "success", "started_at": "1764800001.5"})
    assert info["created_at"] == pytest.approx(1764800000.0005, abs=1e-7)
    assert info["started_at"] == 1764800001.5
    assert info["completed_at"] is None and hash_seconds("soon") is None
    assert hash_seconds("1764800001") == 1764800001.0  # whole seconds stay seconds
    assert task_created_at("c4822b15-82d2-4894-97b8-51bdd469517c") is None  # a uuid4 has none
    assert task_info("t6", {})["created_at"] is None


def test_task_info_and_batch_results_carry_stdout_and_stderr() -> None:
    fields = {"state": "success", "result": "11\n7", "stdout": "hi\n"}
    info = task_info("t5", fields)
    assert info.get("stdout") == "hi\n" and "stderr" not in info
    outcome = _base.info_outcome(info)
    assert (outcome.value, outcome.stdout, outcome.stderr) == (7, "hi\n", "")
    entry = _base.batch_results({"tasks": {"t5": info}, "unknown": []}, ["t5"])["t5"]
    assert entry == {"pending": False, "status": "success", "result": 7, "stdout": "hi\n"}
