"""TaskFuture and Progress on their own: pure code, no services."""

from __future__ import annotations

import concurrent.futures
import io

from fxbroker import TaskFailed, TaskFuture
from sdk._base import TaskOutcome
from sdk.messages import task_failed
from sdk.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_cancelled_outcome_cancels_the_future_and_wakes_waiters() -> None:
    future: TaskFuture[int] = TaskFuture()
    error = task_failed("t", "cancelled", None)
    future.resolve(TaskOutcome("t", "cancelled", None, error))
    assert future.cancelled()
    done, _ = concurrent.futures.wait([future], timeout=0)  # woken, not left to time out
    assert done == {future}
    assert future.cancel() and future.cancel_locally()  # repeatable, as for any future
    future.resolve(TaskOutcome("t", "success", 1))  # a late result changes nothing
    assert future.cancelled()


def test_outcomes_settle_the_future_with_value_or_error_and_output() -> None:
    ok: TaskFuture[int] = TaskFuture()
    bad: TaskFuture[int] = TaskFuture()
    ok.resolve(TaskOutcome("a", "success", 5, None, "out\n", "err\n"))
    failure = TaskFailed("b", "KeyError", "k")
    bad.resolve(TaskOutcome("b", "failed", None, failure))
    assert ok.result(0) == 5 and (ok.stdout, ok.stderr) == ("out\n", "err\n")
    assert bad.exception(0) is failure and bad.stdout == ""
    assert ok.cancel() is False  # finished: nothing to cancel


def test_progress_draws_on_a_terminal_only() -> None:
    terminal = Terminal()
    with Progress(4, stream=terminal, label="run") as bar:
        bar.advance()
        bar.advance(2, failed=1)
        bar.advance()
    lines = terminal.getvalue()
    assert lines.endswith("\n")
    assert lines.rstrip("\n").split("\r")[-1] == (
        "run 4/4 [########################] 100%  1 failed"
    )
    piped = io.StringIO()
    with Progress(4, stream=piped) as bar:
        bar.advance(4)
    assert piped.getvalue() == "" and not bar.visible
    with Progress(3, stream=Terminal(), enabled=False) as off:
        assert not off.visible
