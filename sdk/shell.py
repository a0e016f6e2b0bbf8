"""Run a shell command as a task: :class:`ShellFunction` is a callable the endpoint runs like
any other function (registered and pickled with dill, run by whatever engine the endpoint
uses), returning a :class:`ShellResult`::

    count = ShellFunction("wc -l {path}", walltime_s=60)
    task_id = client.run(function_id=client.register_function(count), path="my data.txt")
    client.get_result(task_id, timeout_s=60).stdout    # "12 my data.txt\\n"

*The command* is a :meth:`str.format` template filled with the call's keyword arguments,
each one shell-quoted (:func:`shlex.quote` of its ``str``), so a value is always one word
whatever characters it holds; braces meant for the shell are doubled (``awk '{{print $1}}'``).
It runs under ``bash`` (``/bin/sh`` where there is none) in a process group of its own, with
no stdin.

*Output* goes to unnamed temporary files, not pipes, so a chatty command never blocks and
never fills memory; the result keeps the tail of each stream: at most ``max_output_chars``
characters, and at most ``snippet_lines`` lines when that is set.

*Outcomes.* An exit code is a result, not an error (``returncode``), unless ``check=True``:
then a non-zero code raises :class:`~sdk.errors.CommandFailed`, so the task fails. Past
``walltime_s`` the whole process group is killed (SIGKILL) and
:class:`~sdk.errors.CommandTimedOut` is raised, so the task fails saying so. Only this
walltime reaches the command: a task's own ``walltime_s`` kills the worker that called it,
and the command, in a session of its own, outlives that worker.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from sdk.errors import CommandFailed, CommandTimedOut

MAX_OUTPUT_CHARS = 10_000
"""How many characters of each stream a result keeps by default (the tail)."""


@dataclass(frozen=True, slots=True)
class ShellResult:
    """How a command ended: its exit code and the tail of what it wrote."""

    cmd: str
    """The command line as run (the template with the call's arguments filled in)."""
    returncode: int
    """The command's exit code (negative: killed by that signal)."""
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class ShellFunction:
    """A shell command template to run as a task (see the module docstring)."""

    cmd: str
    walltime_s: float | None = None
    """Kill the command's process group and fail the task after this many seconds."""
    max_output_chars: int = MAX_OUTPUT_CHARS
    snippet_lines: int | None = None
    """Keep at most this many lines of each stream too (``None``: no line limit)."""
    check: bool = False
    """Raise :class:`~sdk.errors.CommandFailed` (fail the task) on a non-zero exit code."""

    def __post_init__(self) -> None:
        if self.walltime_s is not None and not (
            self.walltime_s > 0 and math.isfinite(self.walltime_s)
        ):
            raise ValueError(f"walltime_s must be a positive number, not {self.walltime_s!r}")
        if self.max_output_chars < 0:
            raise ValueError(f"max_output_chars must be >= 0, not {self.max_output_chars!r}")
        if self.snippet_lines is not None and self.snippet_lines < 0:
            raise ValueError(f"snippet_lines must be >= 0, not {self.snippet_lines!r}")

    def format(self, **kwargs: Any) -> str:
        """The command line for these arguments, each shell-quoted."""
        quoted = {name: shlex.quote(str(value)) for name, value in kwargs.items()}
        try:
            return self.cmd.format(**quoted)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"the command template names {exc}, which the call did not pass as a keyword "
                f"argument (it passed {sorted(kwargs) or 'none'}): {self.cmd}"
            ) from exc

    def __call__(self, **kwargs: Any) -> ShellResult:
        cmd = self.format(**kwargs)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                cmd,
                shell=True,
                executable=shutil.which("bash") or "/bin/sh",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(self.walltime_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                assert self.walltime_s is not None
                raise CommandTimedOut(
                    cmd, self.walltime_s, self._tail(out), self._tail(err)
                ) from None
            except BaseException:
                _kill_group(proc)
                raise
            result = ShellResult(cmd, returncode, self._tail(out), self._tail(err))
        if self.check and returncode != 0:
            raise CommandFailed(cmd, returncode, result.stdout, result.stderr)
        return result

    def _tail(self, file: IO[bytes]) -> str:
        """The last ``max_output_chars`` characters (and ``snippet_lines`` lines) written."""
        limit = self.max_output_chars
        size = file.seek(0, os.SEEK_END)
        # A UTF-8 character is at most 4 bytes: the last 4 * limit bytes hold the last
        # ``limit`` whole characters, even when they begin inside a character.
        file.seek(max(0, size - 4 * limit))
        text = file.read().decode(errors="replace")[-limit:] if limit else ""
        if self.snippet_lines is not None:
            text = "".join(text.splitlines(keepends=True)[-self.snippet_lines :])
        return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its children too) and reap the command."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
