"""The SDK's protocol as pure code: requests built, responses parsed, results decided.

Nothing here does I/O. :class:`~sdk.client.Client`, :class:`~sdk.asyncio_client.AsyncClient`
and :class:`~sdk.executor.Executor` build every :class:`Request` here, send it their own way
(urllib3 through :mod:`sdk.transport`, or aiohttp), and hand the answer back to a parser
here. The WebSocket frames the result listener sends and reads are built and
parsed here too.

**Retries** (:class:`Exchange`, with the policy of :mod:`sdk.retry`). Both clients send a
request until it is answered: a connection failure (any transport error, timeouts
included) or a 429, 502, 503 or 504 answer is tried again with backoff until the client's
outage has lasted ``retry_for_s``; a certificate that fails verification is not an outage
and ends the call at once (:mod:`sdk.tls`). Every request the SDK sends is safe to send twice:

=====================================  ==========================================================
request                                why a repeat does no harm
=====================================  ==========================================================
``GET`` (whoami, info, function,       reads
endpoint, task, task group page)
``batch_status``                       a read, though a ``POST``
``register_function``                  the service derives the id from the owner and the code
                                       hash: the same code answers the same id
``register_endpoint``                  the same name answers the same id
cancel, batch cancel                   a task already cancelled stays so; a repeat answers
                                       ``finished`` with state ``cancelled``, which
                                       :func:`parse_cancel` reads as ``cancelled``
submit                                 carries an ``Idempotency-Key`` made once per batch and
                                       sent on every retry: a repeat answers the first reply's
                                       task ids and queues nothing (a ``409 CONFLICT`` while
                                       the first is still underway is waited out too)
=====================================  ==========================================================

A request that is answered with anything else (a 2xx, a 4xx, a 500) is not tried again.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from sdk import tls
from sdk.errors import (
    APIError,
    CertificateNotTrusted,
    ConfigurationError,
    ConnectionFailed,
    TaskPending,
)
from sdk.messages import (
    ExceptionRecord,
    ResultItem,
    SubmitRequest,
    SubmitResponse,
    TaskInfo,
    TaskSpec,
    exception_from,
    remote_exception,
)
from sdk.retry import RETRY_STATUSES, Outage, parse_retry_after
from sdk.serialize import deserialize, pack_payload, serialize
from sdk.states import TaskState
from sdk.wire import (
    API,
    IDS_PER_REQUEST,
    NOT_FOUND,
    RESULTS_PATH,
    UNAUTHORIZED,
    UNAVAILABLE,
)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to the web service, relative to its base URL."""

    method: str
    path: str
    json: Any = None
    idempotency_key: str | None = None
    """Sent as ``Idempotency-Key``: the same on every retry of this request."""
    wait_s: float = 0.0
    """How long the service may hold the answer (a long poll): the shells let the answer
    take this much longer than their timeout."""

    def headers(self) -> dict[str, str]:
        """The headers of this request beyond the client's own (authorization)."""
        headers = {} if self.json is None else {"content-type": "application/json"}
        if self.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = self.idempotency_key
        return headers

    def body(self) -> bytes | None:
        """The JSON body (orjson: a batch of large arguments is mostly one long string, which
        the standard encoder scans character by character); the same bytes on every retry,
        as the ``Idempotency-Key`` fingerprint wants."""
        return None if self.json is None else orjson.dumps(self.json)


IDEMPOTENCY_HEADER = "Idempotency-Key"


def loads(text: str | bytes) -> Any:
    """JSON from the services, parsed with orjson; anything it refuses (a number past 64
    bits, a UTF-16 body) is left to the standard parser, which decides. Raises ValueError."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def new_idempotency_key() -> str:
    """A fresh key for one batch submit (32 hex digits)."""
    return uuid.uuid4().hex


def _id(value: str) -> str:
    return quote(value, safe="")


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- requests --------------------------------------------------------------------------------


def whoami() -> Request:
    return Request("GET", f"{API}/whoami")


def info() -> Request:
    return Request("GET", f"{API}/info")


def default_function_name(fn: Callable[..., Any]) -> str:
    """The name a function is registered under when none is given."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def register_function(
    fn: Callable[..., Any], *, function_name: str | None = None, description: str | None = None
) -> Request:
    """``POST /v1/functions`` with ``fn`` serialized as code."""
    if not callable(fn):
        raise TypeError(f"register_function needs a callable, not {type(fn).__name__}")
    body: dict[str, str] = {
        "function_name": function_name or default_function_name(fn),
        "function_code": serialize(fn),
    }
    if description is not None:
        body["description"] = description
    return Request("POST", f"{API}/functions", body)


def get_function(function_id: str) -> Request:
    return Request("GET", f"{API}/functions/{_id(function_id)}")


def register_endpoint(name: str) -> Request:
    return Request("POST", f"{API}/endpoints", {"name": name})


def get_endpoint(endpoint_id: str) -> Request:
    return Request("GET", f"{API}/endpoints/{_id(endpoint_id)}")


def endpoint_statuses(*, limit: int = 100, offset: int = 0) -> Request:
    """``GET /v1/endpoints/status``: a page of the caller's usable endpoints with their
    heartbeat, load and what they finished lately (what ``fxbroker status`` shows)."""
    return Request("GET", f"{API}/endpoints/status?limit={int(limit)}&offset={int(offset)}")


def rotate_endpoint_credential(endpoint_id: str) -> Request:
    """``POST /v1/endpoints/{id}/credential``: a new credential replaces the old one."""
    return Request("POST", f"{API}/endpoints/{_id(endpoint_id)}/credential")


def revoke_endpoint_credential(endpoint_id: str) -> Request:
    return Request("DELETE", f"{API}/endpoints/{_id(endpoint_id)}/credential")


def task_spec(
    function_id: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    walltime_s: float | None = None,
) -> TaskSpec:
    """One task of a batch: the function, its packed arguments and, when given, the longest
    it may run (``walltime_s``; the endpoint's own walltime still applies if tighter)."""
    spec: TaskSpec = {
        "function_id": function_id,
        "payload": pack_payload(tuple(args), dict(kwargs or {})),
    }
    if walltime_s is not None:
        spec["walltime_s"] = walltime_s
    return spec


def submit(
    endpoint_id: str,
    tasks: Sequence[TaskSpec],
    task_group_id: str | None,
    *,
    idempotency_key: str | None = None,
) -> Request:
    """``POST /v1/endpoints/{id}/submit``: the reply lists task ids in the order of ``tasks``.

    The request carries ``idempotency_key`` (a new one when not given), so sending this same
    :class:`Request` again never queues its tasks twice."""
    body: SubmitRequest = {"tasks": list(tasks)}
    if task_group_id is not None:
        body["task_group_id"] = task_group_id
    key = idempotency_key if idempotency_key is not None else new_idempotency_key()
    return Request("POST", f"{API}/endpoints/{_id(endpoint_id)}/submit", body, key)


def _wait_query(wait_s: float) -> str:
    return f"?wait_s={wait_s:.3f}" if wait_s > 0 else ""


def get_task(task_id: str, *, wait_s: float = 0.0) -> Request:
    """``wait_s`` > 0: a long poll, answered once the task is terminal or after that long."""
    return Request("GET", f"{API}/tasks/{_id(task_id)}{_wait_query(wait_s)}", wait_s=wait_s)


def batch_status(task_ids: Sequence[str], *, wait_s: float = 0.0) -> Request:
    """``wait_s`` > 0: a long poll, answered once any of the tasks is terminal or after
    that long."""
    path = f"{API}/tasks/batch_status{_wait_query(wait_s)}"
    return Request("POST", path, {"task_ids": list(task_ids)}, wait_s=wait_s)


def get_task_group(task_group_id: str, *, offset: int = 0, limit: int | None = None) -> Request:
    """One page of a task group's tasks (the service's default page size without ``limit``)."""
    query = f"?offset={offset}" + (f"&limit={limit}" if limit is not None else "")
    path = f"{API}/task_groups/{_id(task_group_id)}"
    return Request("GET", path + (query if offset or limit is not None else ""))


def cancel_task(task_id: str) -> Request:
    return Request("POST", f"{API}/tasks/{_id(task_id)}/cancel")


def cancel_tasks(task_ids: Sequence[str]) -> Request:
    """Cancel up to :data:`IDS_PER_REQUEST` tasks in one request."""
    return Request("POST", f"{API}/tasks/cancel", {"task_ids": list(task_ids)})


def chunks(items: Sequence[str], size: int = IDS_PER_REQUEST) -> list[Sequence[str]]:
    """``items`` cut into requests of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


R = TypeVar("R")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Calls(Generic[R]):
    """Requests for one call about many tasks, and how their answers merge into its result.

    Both clients send :attr:`requests` one after another, in order, and hand the answers to
    :attr:`merge`: the same requests and the same loop, sync or async."""

    requests: list[Request]
    merge: Callable[[list[Any]], R]


def _per_chunk(
    task_ids: Sequence[str],
    build: Callable[[Sequence[str]], Request],
    parse: Callable[[Any, Sequence[str]], Mapping[str, V]],
) -> Calls[dict[str, V]]:
    """One request per :data:`IDS_PER_REQUEST` distinct ids; answers merged by task id."""
    parts = chunks(list(dict.fromkeys(task_ids)))

    def merge(answers: list[Any]) -> dict[str, V]:
        merged: dict[str, V] = {}
        for part, answer in zip(parts, answers, strict=True):
            merged.update(parse(answer, part))
        return merged

    return Calls([build(part) for part in parts], merge)


def get_batch_result(
    task_ids: Sequence[str], *, wait_s: float = 0.0
) -> Calls[dict[str, dict[str, Any]]]:
    """``get_batch_result``: funcX-style entries per task id (see :func:`batch_results`).
    With ``wait_s`` > 0, the request about the first 1,000 ids is a long poll."""
    calls = _per_chunk(task_ids, batch_status, batch_results)
    if wait_s > 0 and calls.requests:
        calls.requests[0] = batch_status(calls.requests[0].json["task_ids"], wait_s=wait_s)
    return calls


def get_tasks(task_ids: Sequence[str]) -> Calls[dict[str, TaskInfo]]:
    """``get_tasks``: the :class:`TaskInfo` per task id (see :func:`batch_infos`)."""
    return _per_chunk(task_ids, batch_status, batch_infos)


def cancel_many(task_ids: Sequence[str]) -> Calls[dict[str, str]]:
    """``cancel_tasks``: the cancel outcome per task id (see :func:`parse_cancels`)."""
    return _per_chunk(task_ids, cancel_tasks, lambda answer, _: parse_cancels(answer))


LONG_POLL_S = 20.0
"""The longest wait one request of the SDK asks for (the service allows 30 s), so that a
long poll stays well inside the proxies' and the client's idle timeouts."""


GATHER_MAX_S = 0.02
"""The longest pause between the answers of a wait for many tasks (:meth:`LongPoll.pause_s`)."""


class LongPoll:
    """The clock of a wait made of long polls (``get_result(timeout_s=...)``, ``wait``).

    Each request asks the service to hold its answer :meth:`wait_s` seconds; an answer that
    comes back early with nothing new finished means a service that does not hold answers
    (an older one), and only then does the shell sleep, ``poll_s`` (:meth:`pause_s`)."""

    def __init__(self, *, timeout_s: float | None, poll_s: float, now: float) -> None:
        if not (poll_s > 0 and math.isfinite(poll_s)):
            raise ValueError(f"poll_s must be a positive number, not {poll_s!r}")
        if timeout_s is not None and not (timeout_s >= 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a number >= 0 or None, not {timeout_s!r}")
        self.poll_s = poll_s
        self.deadline = None if timeout_s is None else now + timeout_s

    def wait_s(self, now: float) -> float:
        """How long the next request may be held: up to :data:`LONG_POLL_S`, never past
        the deadline (0 once it has passed)."""
        if self.deadline is None:
            return LONG_POLL_S
        return max(0.0, min(LONG_POLL_S, self.deadline - now))

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def pause_s(
        self, *, asked_s: float, took_s: float, progressed: bool, now: float, pending: int = 0
    ) -> float:
        """How long to sleep before the next request (never past the deadline): 0 when the
        service held the answer or something finished, else ``poll_s``. Except when an
        answer brought results and more than one task is still ``pending``: then as long as
        that answer took, at most :data:`GATHER_MAX_S`. Each answer re-reads every task
        still asked about, so asking again at once while results trickle in would spend the
        service's time re-reading the same pending tasks; after the pause the next answer
        carries what finished meanwhile, and a wait spends at most half its time asking."""
        if progressed and pending > 1:
            pause = min(took_s, GATHER_MAX_S)
        elif progressed or asked_s <= 0 or took_s >= asked_s / 2:
            return 0.0
        else:
            pause = self.poll_s
        if self.deadline is None:
            return pause
        return max(0.0, min(pause, self.deadline - now))


class Waiting:
    """Where a wait for many tasks stands (``Client.wait`` and ``AsyncClient.wait``).

    The shell loops: ask :meth:`get_batch_result` of :meth:`asking` with ``wait_s`` =
    ``clock.wait_s(now)`` (a long poll: the service answers as soon as any of them
    finished), :meth:`record` the answer, stop when :attr:`finished`, raise
    :meth:`timed_out` once ``clock`` expired, and sleep ``clock.pause_s(...)`` (0 unless the
    service does not hold answers). Tasks that finish together come back in one answer."""

    def __init__(
        self, task_ids: Sequence[str], *, timeout_s: float | None, poll_s: float, now: float
    ) -> None:
        self.clock = LongPoll(timeout_s=timeout_s, poll_s=poll_s, now=now)
        self.task_ids = list(dict.fromkeys(task_ids))
        self.done: dict[str, dict[str, Any]] = {}

    def pending(self) -> list[str]:
        """The tasks not known to have finished, in the order given."""
        return [t for t in self.task_ids if t not in self.done]

    def asking(self) -> list[str]:
        """The tasks the next request asks about: the first 1,000 pending (one long poll;
        the others are asked once earlier ones finish)."""
        return self.pending()[:IDS_PER_REQUEST]

    def record(self, results: Mapping[str, dict[str, Any]]) -> bool:
        """Keep the entries of the tasks that finished; True if any newly did."""
        before = len(self.done)
        for task_id, entry in results.items():
            if not entry["pending"]:
                self.done[task_id] = entry
        return len(self.done) > before

    @property
    def failed(self) -> int:
        """Finished tasks that ended with an exception."""
        return sum(1 for entry in self.done.values() if "exception" in entry)

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.task_ids)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every task's entry, in the order given."""
        return {t: self.done[t] for t in self.task_ids}

    def timed_out(self) -> TimeoutError:
        return TimeoutError(f"{len(self.task_ids) - len(self.done)} tasks still running")


def is_terminal(info: TaskInfo) -> bool:
    return info["state"] in (TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED)


FunctionKey = tuple[Hashable, str | None, str | None]


def function_key(
    fn: Callable[..., Any], function_name: str | None, description: str | None
) -> FunctionKey | None:
    """The key a client caches a registration under; ``None`` for an unhashable callable."""
    try:
        hash(fn)
    except TypeError:
        return None
    return (fn, function_name, description)


class Batch:
    """Tasks gathered for one submit (``Client.create_batch``); ``len`` counts them."""

    def __init__(self) -> None:
        self.tasks: list[TaskSpec] = []

    def add(
        self,
        function_id: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        walltime_s: float | None = None,
    ) -> None:
        """Add one call of ``function_id``; its arguments are serialized now. ``walltime_s``
        caps how long this task may run: past it the task fails with ``WalltimeExceeded``."""
        self.tasks.append(task_spec(function_id, args, kwargs, walltime_s=walltime_s))

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Batch of {len(self.tasks)} tasks>"


# -- sending with retries --------------------------------------------------------------------


def retryable(request: Request, status: int) -> bool:
    """Whether an answer with ``status`` is worth sending ``request`` again for."""
    return status in RETRY_STATUSES or (status == 409 and request.idempotency_key is not None)


class Exchange:
    """One request sent until it is answered, the loop both clients run::

        exchange = Exchange(request, client_outage, url=base_url)
        while True:
            try:
                response = send(request)                      # the shell's own I/O
            except TransportError as exc:
                delay = exchange.after_error(exc, now())
                if delay is None:
                    raise exchange.unreachable(now()) from exc
            else:
                delay = exchange.after_answer(status, retry_after_header, now())
                if delay is None:
                    return exchange.result(status, content, request_id=..., now=now())
            sleep(delay)

    ``outage`` is the client's :class:`~sdk.retry.Outage`, shared by its requests."""

    def __init__(self, request: Request, outage: Outage, *, url: str) -> None:
        self.request = request
        self.outage = outage
        self.url = url
        self.attempts = 0
        """Times the request was sent (or tried to be)."""
        self._reason = ""
        self._untrusted = ""
        self._gave_up = False

    def after_error(self, error: Exception, now: float) -> float | None:
        """The request could not be sent or got no answer: the delay before the next try,
        or ``None`` when the outage has lasted the client's ``retry_for_s``, or when the
        service's certificate was refused (no outage: waiting would not change it)."""
        self.attempts += 1
        refused = tls.certificate_error(error)
        if refused is not None:
            self._untrusted = tls.untrusted(refused)
            return None
        self._reason = f"{type(error).__name__}: {error}"
        return self.outage.failed(now, self._reason)

    def after_answer(self, status: int, retry_after: str | None, now: float) -> float | None:
        """The service answered ``status``: the delay before trying again, or ``None`` when
        the answer is final (pass it to :meth:`result`)."""
        self.attempts += 1
        if not retryable(self.request, status):
            self.outage.ended(now)
            return None
        self._reason = f"HTTP {status}"
        retry_after_s = parse_retry_after(retry_after)
        delay = self.outage.failed(now, self._reason, retry_after_s=retry_after_s)
        self._gave_up = delay is None
        return delay

    def unreachable(self, now: float) -> ConnectionFailed:
        """The error a call ends with when the service could not be reached in time, or
        :class:`~sdk.errors.CertificateNotTrusted` when its certificate was refused."""
        if self._untrusted:
            return CertificateNotTrusted(self.url, self._untrusted)
        return ConnectionFailed(self.url, self.outage.describe(self._reason, now))

    def result(self, status: int, content: bytes, *, request_id: str, now: float) -> Any:
        """The parsed final answer (see :func:`parse_response`). An answer that was still
        retryable when the bound was reached raises its :class:`APIError` saying so."""
        try:
            return parse_response(status, content, request_id=request_id)
        except APIError as exc:
            if not self._gave_up:
                raise
            message = self.outage.describe(exc.message or f"HTTP {status}", now)
            raise APIError(exc.status, exc.code, message, exc.request_id) from exc


# -- responses -------------------------------------------------------------------------------


def _bad_response(status: int, what: str) -> APIError:
    return APIError(status, "BAD_RESPONSE", f"the service answered with {what}")


def parse_response(status: int, content: bytes, *, request_id: str = "") -> Any:
    """The JSON body of a 2xx answer, or :class:`APIError` for any other.

    ``request_id`` (from the ``x-request-id`` header) is used when the error body has none."""
    try:
        data: Any = loads(content) if content else None
    except ValueError:
        data = None
        if 200 <= status < 300:
            raise _bad_response(status, "a body that is not JSON") from None
    if 200 <= status < 300:
        return data
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        message = str(data.get("message", ""))
        raise APIError(status, data["code"], message, str(data.get("request_id") or request_id))
    text = content.decode(errors="replace").strip()[:200] or "no body"
    raise APIError(status, f"HTTP_{status}", text, request_id)


def _field(data: Any, name: str, kind: type[Any] = str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get(name), kind):
        raise _bad_response(200, f"no {kind.__name__} {name!r}")
    return data[name]


def parse_function_id(data: Any) -> str:
    value: str = _field(data, "function_id")
    return value


def parse_endpoint_id(data: Any) -> str:
    value: str = _field(data, "endpoint_id")
    return value


def parse_endpoint_registration(data: Any) -> tuple[str, str | None]:
    """The endpoint id and, when that request created the endpoint, its credential."""
    credential = data.get("credential") if isinstance(data, dict) else None
    if credential is not None and not isinstance(credential, str):
        raise _bad_response(200, "a credential that is not a string")
    return parse_endpoint_id(data), credential


def parse_credential(data: Any) -> str:
    value: str = _field(data, "credential")
    return value


def parse_revoked(data: Any) -> bool:
    """Whether the revoke request found a credential to revoke."""
    value: bool = _field(data, "revoked", bool)
    return value


def parse_ws_url(data: Any) -> str:
    value: str = _field(data, "ws_url")
    if not value:
        raise APIError(
            200,
            "NO_WS_URL",
            "the web service does not know its WebSocket URL; set FXBROKER_WS_URL",
        )
    return value


def parse_submit(data: Any, expected: int) -> SubmitResponse:
    """The submit reply, checked to carry one task id per task sent."""
    group: str = _field(data, "task_group_id")
    ids: list[Any] = _field(data, "task_ids", list)
    if len(ids) != expected or not all(isinstance(t, str) for t in ids):
        raise _bad_response(200, f"{len(ids)} task ids for {expected} tasks")
    return {"task_group_id": group, "task_ids": ids}


def parse_cancel(data: Any) -> str:
    """The outcome of one cancel: ``cancelled`` (it will never run), ``interrupt_requested``
    (it was running; its agent is told to stop it) or ``finished`` (nothing to do).

    A task found already ``cancelled`` reads as ``cancelled`` too: it will not run, and a
    retried cancel whose first answer was lost must not report otherwise."""
    value: str = _field(data, "outcome")
    if value == "finished" and data.get("state") == TaskState.CANCELLED:
        return "cancelled"
    return value


def parse_cancels(data: Any) -> dict[str, str]:
    """Per task id the outcome of a batch cancel (ids the service does not know are left out)."""
    tasks: dict[str, Any] = _field(data, "tasks", dict)
    return {task_id: parse_cancel(result) for task_id, result in tasks.items()}


def parse_task_group_page(data: Any) -> tuple[int, list[tuple[str, str | None]]]:
    """``(total, [(task id, state or None once its record expired)])`` of one page."""
    total: int = _field(data, "total", int)
    tasks: list[Any] = _field(data, "tasks", list)
    page: list[tuple[str, str | None]] = []
    for task in tasks:
        task_id: str = _field(task, "task_id")
        state = task.get("state")
        page.append((task_id, state if isinstance(state, str) else None))
    return total, page


def parse_task_info(data: Any) -> TaskInfo:
    _field(data, "task_id")
    _field(data, "state")
    info: TaskInfo = data
    return info


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one task ended, as the SDK hands it to a future or an awaiter.

    ``error`` is ``None`` for a success (``value`` holds the result); otherwise the remote
    exception rebuilt as its own type, or :class:`~sdk.errors.TaskFailed`. ``stdout`` and
    ``stderr`` are what the function printed (empty when nothing, or not known)."""

    task_id: str
    state: str
    value: Any = None
    error: Exception | None = None
    stdout: str = ""
    stderr: str = ""

    def unwrap(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


def task_result(info: TaskInfo) -> Any:
    """The value of a finished task.

    Raises :class:`TaskPending` while the task is not terminal, the remote exception (rebuilt
    as its own type when it can be, see :func:`~sdk.messages.remote_exception`) for a failed
    one, and :class:`~sdk.errors.TaskFailed` for a cancelled one."""
    return info_outcome(info).unwrap()


def info_outcome(info: TaskInfo) -> TaskOutcome:
    """The outcome a :class:`TaskInfo` describes (a :class:`TaskPending` error while the task
    is not terminal)."""
    value, error = outcome(
        info["task_id"], info["state"], info.get("result"), info.get("exception")
    )
    return TaskOutcome(
        info["task_id"],
        info["state"],
        value,
        error,
        info.get("stdout", ""),
        info.get("stderr", ""),
    )


def outcome(
    task_id: str, state: str, result: str | None, exception: ExceptionRecord | None
) -> tuple[Any, Exception | None]:
    """``(value, None)`` for a success, ``(None, error)`` otherwise (see :func:`task_result`)."""
    if state == TaskState.SUCCESS:
        return (deserialize(result) if result else None), None
    if state in (TaskState.FAILED, TaskState.CANCELLED):
        return None, remote_exception(task_id, state, exception)
    return None, TaskPending(task_id, state)


def expired_outcome(task_id: str) -> TaskOutcome:
    """The outcome of a task whose record expired before it was read."""
    error = remote_exception(
        task_id,
        TaskState.FAILED,
        {
            "type": "ResultExpired",
            "module": "fxbroker",
            "message": f"the record of task {task_id} expired",
            "traceback": "",
        },
    )
    return TaskOutcome(task_id, TaskState.FAILED, None, error)


def batch_results(data: Any, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task id, funcX style: ``{"pending", "status", "result"}`` or ``"exception"``, plus
    ``"stdout"`` / ``"stderr"`` when the task printed anything.

    A task id the service does not know (never submitted, another user's, or expired)
    raises :class:`APIError` ``TASK_NOT_FOUND`` naming them."""
    results: dict[str, dict[str, Any]] = {}
    for task_id, info in batch_infos(data, task_ids).items():
        state = info["state"]
        terminal = state in (TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED)
        entry: dict[str, Any] = {"pending": not terminal, "status": state}
        if terminal:
            done = info_outcome(info)
            if done.error is None:
                entry["result"] = done.value
            else:
                entry["exception"] = done.error
            if done.stdout:
                entry["stdout"] = done.stdout
            if done.stderr:
                entry["stderr"] = done.stderr
        results[task_id] = entry
    return results


def batch_infos(data: Any, task_ids: Sequence[str]) -> dict[str, TaskInfo]:
    """The :class:`TaskInfo` of each of ``task_ids`` from a ``batch_status`` answer."""
    tasks: dict[str, Any] = _field(data, "tasks", dict)
    unknown = [str(t) for t in data.get("unknown", [])]
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise APIError(404, "TASK_NOT_FOUND", f"unknown task ids: {shown}")
    return {task_id: parse_task_info(tasks.get(task_id)) for task_id in task_ids}


# -- WebSocket frames ------------------------------------------------------------------------


def results_url(ws_url: str) -> str:
    """The push endpoint of a WebSocket service: ``ws://h:p`` -> ``ws://h:p/v1/results``."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigurationError(f"WebSocket URL {ws_url!r} must start with ws:// or wss://")
    path = parts.path.rstrip("/")
    if not path.endswith(RESULTS_PATH):
        path = normalize_path(path) + RESULTS_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def results_urls(ws_url: str) -> list[str]:
    """The push endpoints of one or several copies of the WebSocket service, given as one
    URL or several comma-separated (``ws://a:8001,ws://b:8001``), in the order given."""
    urls = [results_url(part.strip()) for part in ws_url.split(",") if part.strip()]
    if not urls:
        raise ConfigurationError(f"WebSocket URL {ws_url!r} names no ws:// or wss:// URL")
    return urls


def normalize_path(path: str) -> str:
    return path[: -len(API)] if path.endswith(API) else path


def subscribe_frame(task_group_id: str, cursor: str) -> str:
    return json.dumps({"type": "subscribe", "task_group_id": task_group_id, "cursor": cursor})


@dataclass(frozen=True, slots=True)
class Subscribed:
    task_group_id: str
    cursor: str


@dataclass(frozen=True, slots=True)
class Results:
    task_group_id: str
    items: list[ResultItem]


@dataclass(frozen=True, slots=True)
class Refused:
    """An error frame: the service refused a frame (``task_group_id`` set when it names one)."""

    code: str
    message: str
    task_group_id: str | None


Frame = Subscribed | Results | Refused


def parse_frame(text: str | bytes) -> Frame:
    """Parse one frame of the ws service; a malformed one raises :class:`ValueError`."""
    try:
        data: Any = loads(text)
    except ValueError:
        data = None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "results":
            items = [_result_item(i) for i in data["results"]]
            return Results(str(data["task_group_id"]), items)
        if kind == "subscribed":
            return Subscribed(str(data["task_group_id"]), str(data["cursor"]))
        if kind == "error":
            group = data.get("task_group_id")
            return Refused(str(data["code"]), str(data.get("message", "")), group)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {kind} frame from the ws service: {exc!r}") from exc
    raise ValueError(f"unexpected frame from the ws service: {str(text)[:100]!r}")


def _result_item(raw: Any) -> ResultItem:
    item: ResultItem = {
        "task_id": str(raw["task_id"]),
        "state": str(raw["state"]),
        "cursor": str(raw["cursor"]),
    }
    if isinstance(raw.get("result"), str):
        item["result"] = raw["result"]
    exc = raw.get("exception")
    if isinstance(exc, dict):
        item["exception"] = exception_from(exc)
    if isinstance(raw.get("stdout"), str) and raw["stdout"]:
        item["stdout"] = raw["stdout"]
    if isinstance(raw.get("stderr"), str) and raw["stderr"]:
        item["stderr"] = raw["stderr"]
    return item


def item_outcome(item: ResultItem) -> TaskOutcome:
    """What a pushed result resolves to.

    Deserializing the result may itself fail; that error is the outcome then."""
    task_id, state = item["task_id"], item["state"]
    try:
        value, error = outcome(task_id, state, item.get("result"), item.get("exception"))
    except Exception as exc:
        value, error = None, exc
    return TaskOutcome(task_id, state, value, error, item.get("stdout", ""), item.get("stderr", ""))


def error_status(code: str) -> int:
    """The HTTP status matching a ws error code (for the :class:`APIError` it becomes)."""
    if code == UNAUTHORIZED:
        return 401
    if code.endswith(NOT_FOUND):
        return 404
    if code == UNAVAILABLE:
        return 503
    return 400
