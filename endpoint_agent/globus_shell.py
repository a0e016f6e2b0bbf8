"""Globus Compute's ``ShellFunction`` (and its ``MPIFunction``) on an fxbroker agent.

Such an object arrives pickled against ``globus_compute_sdk`` (the ``globus`` extra installs
it on the agent's node) and is called like any function; it returns that SDK's
``ShellResult`` (``cmd``, ``returncode``, ``stdout``, ``stderr``, ``exception_name``) or,
made with ``return_dict=True``, the same as a dict. Called bare, it would leave its output
files in the worker's working directory and say in its stderr that the endpoint has no
sandbox: a Globus Compute endpoint gives each task a sandbox directory through
``GC_TASK_SANDBOX_DIR``, where the object changes directory and writes its files.

:func:`adapt` gives it one: each call runs with ``GC_TASK_SANDBOX_DIR`` set to a fresh
temporary directory, removed after the call (relative ``stdout=``/``stderr=`` paths land
there too; absolute ones are kept), and the working directory and environment are restored
afterwards. Both are the process's own, so calls take a lock: one at a time per process,
which only costs anything with the thread engine (a worker process runs one call at a time
anyway). The object itself is untouched: its walltime, snippet and return-code rules are
that SDK's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

SHELL_FUNCTION = ("globus_compute_sdk.sdk.shell_function", "ShellFunction")
"""Where that SDK defines ``ShellFunction``, the base of every object adapted here."""
SANDBOX_VARIABLE = "GC_TASK_SANDBOX_DIR"

_lock = threading.Lock()


def is_globus_shell_function(fn: object) -> bool:
    """Whether ``fn`` is a Globus Compute ``ShellFunction`` (checked without importing it)."""
    return any((c.__module__, c.__qualname__) == SHELL_FUNCTION for c in type(fn).__mro__)


class SandboxedShellFunction:
    """A Globus Compute ``ShellFunction`` called in a sandbox of its own (module docstring)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = str(getattr(fn, "__name__", type(fn).__name__))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            cwd = os.getcwd()
            before = os.environ.get(SANDBOX_VARIABLE)
            sandbox = tempfile.mkdtemp(prefix="fxbroker-shell-")
            os.environ[SANDBOX_VARIABLE] = sandbox
            try:
                return self.fn(*args, **kwargs)
            finally:
                os.chdir(cwd)
                if before is None:
                    os.environ.pop(SANDBOX_VARIABLE, None)
                else:
                    os.environ[SANDBOX_VARIABLE] = before
                shutil.rmtree(sandbox, ignore_errors=True)


def adapt(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as the worker should call it: sandboxed when it is a Globus ``ShellFunction``,
    else itself."""
    return SandboxedShellFunction(fn) if is_globus_shell_function(fn) else fn
