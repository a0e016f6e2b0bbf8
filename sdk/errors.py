"""The one exception tree of fxbroker. Every error raised by the SDK derives from
:class:`FxBrokerError`::

    FxBrokerError
    ├── SerializationError          an object could not be serialized
    ├── DeserializationError        a buffer could not be deserialized
    ├── ConfigurationError          no URL/token/endpoint could be found
    ├── APIError                    the service answered with an error (status, code, message)
    ├── ConnectionFailed            the service could not be reached (after retries, where any)
    │   └── CertificateNotTrusted   its TLS certificate failed verification (never retried)
    ├── TaskPending                 a result was asked for before the task finished
    ├── TaskFailed                  the task ended failed or cancelled (remote traceback attached)
    ├── CommandFailed               a ShellFunction's command exited non-zero (``check=True``)
    └── CommandTimedOut             a ShellFunction's command ran past its walltime, was killed

Each error passes all its context to ``super().__init__`` so it survives pickling
across processes.
"""

from __future__ import annotations


class FxBrokerError(Exception):
    """Base class of every fxbroker error."""


class SerializationError(FxBrokerError):
    """An object could not be serialized with the chosen strategy."""


class DeserializationError(FxBrokerError):
    """A buffer could not be deserialized (bad header, disallowed strategy, corrupt body)."""


class ConfigurationError(FxBrokerError):
    """The SDK could not find the service URL, a token or an endpoint id."""


class APIError(FxBrokerError):
    """The web service answered with an error."""

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(status, code, message, request_id)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class ConnectionFailed(FxBrokerError):
    """The web or WebSocket service could not be reached, or the connection kept failing."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"could not reach {self.url}: {self.reason}"


class CertificateNotTrusted(ConnectionFailed):
    """The service's TLS certificate failed verification: not retried, since waiting does
    not make it trusted. ``reason`` says why and how to trust a private CA (:mod:`sdk.tls`)."""

    def __str__(self) -> str:
        return f"the TLS certificate of {self.url} is not trusted: {self.reason}"


class TaskPending(FxBrokerError):
    """The task has not finished yet; ``state`` says where it is."""

    def __init__(self, task_id: str, state: str) -> None:
        super().__init__(task_id, state)
        self.task_id = task_id
        self.state = state

    def __str__(self) -> str:
        return f"task {self.task_id} is still {self.state}"


class TaskFailed(FxBrokerError):
    """The task failed or was cancelled. ``remote_traceback`` is the traceback on the endpoint."""

    def __init__(
        self,
        task_id: str,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        state: str = "failed",
    ) -> None:
        super().__init__(task_id, type_name, message, remote_traceback, state)
        self.task_id = task_id
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.state = state

    def __str__(self) -> str:
        text = f"task {self.task_id} {self.state}: {self.type_name}: {self.message}"
        if self.remote_traceback:
            text += f"\n\nRemote traceback:\n{self.remote_traceback}"
        return text


class CommandFailed(FxBrokerError):
    """A :class:`~sdk.shell.ShellFunction` made with ``check=True`` ran a command that exited
    with a non-zero code; ``stdout`` and ``stderr`` are the tails it kept."""

    def __init__(self, cmd: str, returncode: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(cmd, returncode, stdout, stderr)
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        text = f"the command exited with code {self.returncode}: {self.cmd}"
        return f"{text}\n\nstderr (tail):\n{self.stderr}" if self.stderr else text


class CommandTimedOut(FxBrokerError):
    """A :class:`~sdk.shell.ShellFunction`'s command ran past its ``walltime_s``; its whole
    process group was killed. ``stdout`` and ``stderr`` are the tails written until then."""

    def __init__(self, cmd: str, walltime_s: float, stdout: str = "", stderr: str = "") -> None:
        super().__init__(cmd, walltime_s, stdout, stderr)
        self.cmd = cmd
        self.walltime_s = walltime_s
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        return (
            f"the command ran past its walltime of {self.walltime_s:g} s; its process group "
            f"was killed: {self.cmd}"
        )
