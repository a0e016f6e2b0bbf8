"""ShellFunction on its own, called in this process: the template, its checks, the tails."""

from __future__ import annotations

import pickle

import dill
import pytest

from sdk.errors import CommandFailed, CommandTimedOut
from sdk.shell import ShellFunction, ShellResult


def test_each_argument_is_one_quoted_word() -> None:
    fn = ShellFunction("printf '%s|' {a} {b}")
    assert fn.format(a="x y", b="$(id) ;") == "printf '%s|' 'x y' '$(id) ;'"
    assert fn(a="x y", b="$(id) ;").stdout == "x y|$(id) ;|"
    assert ShellFunction("echo {n:>4}").format(n=7) == "echo    7"


def test_a_missing_argument_is_named() -> None:
    with pytest.raises(ValueError, match=r"names 'path', which the call did not pass.*\['n'\]"):
        ShellFunction("wc -l {path}")(n=1)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"walltime_s": 0}, "walltime_s must be a positive number"),
        ({"walltime_s": float("inf")}, "walltime_s must be a positive number"),
        ({"max_output_chars": -1}, "max_output_chars must be >= 0"),
        ({"snippet_lines": -2}, "snippet_lines must be >= 0"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ShellFunction("true", **options)  # type: ignore[arg-type]


def test_the_tail_is_whole_characters() -> None:
    cmd = "printf '€%.0s' $(seq 1 50); printf ab"  # the tail's bytes begin inside a '€'
    result = ShellFunction(cmd, max_output_chars=7)()
    assert result == ShellResult(cmd, 0, "€" * 5 + "ab", "")
    assert ShellFunction("echo hi", max_output_chars=0)().stdout == ""


def test_errors_and_results_survive_pickling() -> None:
    failed = CommandFailed("false", 1, "", "nope")
    again = pickle.loads(pickle.dumps(failed))
    assert (again.cmd, again.returncode, again.stderr) == ("false", 1, "nope")
    assert str(again) == "the command exited with code 1: false\n\nstderr (tail):\nnope"
    late = pickle.loads(pickle.dumps(CommandTimedOut("sleep 9", 0.5, "a", "b")))
    assert (late.walltime_s, late.stdout, late.stderr) == (0.5, "a", "b")
    fn = dill.loads(dill.dumps(ShellFunction("echo {x}", check=True)))
    assert fn == ShellFunction("echo {x}", check=True)
    with pytest.raises(CommandFailed):
        ShellFunction("exit 2", check=True)()
