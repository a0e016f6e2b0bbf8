"""``fxbroker status``: your endpoints, their agents, workers and queues, in the terminal.

It asks the web service (``GET /v1/endpoints/status``, the view the dashboard shows) through
the SDK ``Client``, so it finds the service as ``Client()`` does: ``FXBROKER_URL`` and
``FXBROKER_TOKEN``, else the running ``fxbroker dev`` of ``$FXBROKER_HOME``; an ``https://``
service is checked against ``FXBROKER_CA_FILE`` as the SDK does. A table by default,
``--json`` for scripts, ``--watch`` redraws the table every ``--interval`` seconds (1 s at
least) until Ctrl-C, which ends it with exit status 0.

The table, one row per endpoint and a totals row::

    ENDPOINT  STATE    HOST   WORKERS  QUEUED  RUNNING  DONE/15M  TASKS/S  HEARTBEAT
    gpu-1     online   node7      1/4       3        1       120     0.13  2s ago
    local     offline  -            -       0        0         0     0.00  -
    TOTAL     1/2 on              1/4       3        1       120     0.13

``WORKERS`` is busy/total from the latest heartbeat, ``RUNNING`` the tasks agents hold,
``DONE/15M`` your tasks finished in the last 15 minutes and ``TASKS/S`` their rate.

``--json`` prints one object, shape version :data:`JSON_VERSION` (fields are only added,
never renamed or removed, within a version)::

    {"version": 1, "service": URL, "now": unix s, "window_s": 900,
     "endpoints": [{"endpoint_id", "name", "owned", "online",
                    "agent", "host", "engine",          # the latest heartbeat, or null
                    "workers", "busy",                  # worker slots and busy ones, or null
                    "queued",                           # tasks no agent has taken yet
                    "running",                          # tasks agents hold (started or about to)
                    "finished",                         # your tasks it finished in window_s
                    "tasks_per_s",                      # finished / window_s
                    "last_heartbeat", "heartbeat_age_s"}],   # unix s and its age, or null
     "totals": {"endpoints", "online", "workers", "busy", "queued", "running", "finished",
                "tasks_per_s"}}

``queued`` and ``running`` are the endpoint's whole queue (a shared endpoint's includes other
users' tasks); ``finished`` counts your own tasks only (your newest 2,000).

:func:`summarize` and :func:`render` are pure; :func:`show` and :func:`watch` do the I/O.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk.client import Client

JSON_VERSION = 1
MIN_INTERVAL_S = 1.0
"""``--watch`` asks the service at most this often."""
DEFAULT_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 10.0
NAME_WIDTH = 18
HOST_WIDTH = 15
CLEAR = "\x1b[H\x1b[2J"
"""Cursor home, clear the screen: how ``--watch`` redraws on a terminal."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarize(answer: dict[str, Any], *, service: str) -> dict[str, Any]:
    """The ``--json`` document (see the module docstring) from the service's answer."""
    now = _float(answer.get("now")) or time.time()
    window_s = _int(answer.get("window_s")) or 900
    rows = []
    for view in answer.get("endpoints", []):
        beat = _float(view.get("last_heartbeat"))
        finished = _int(view.get("finished")) or 0
        rows.append(
            {
                "endpoint_id": view.get("endpoint_id"),
                "name": view.get("name"),
                "owned": bool(view.get("owned")),
                "online": bool(view.get("online")),
                "agent": view.get("agent"),
                "host": view.get("host"),
                "engine": view.get("engine"),
                "workers": _int(view.get("workers")),
                "busy": _int(view.get("running")),
                "queued": _int(view.get("queued")) or 0,
                "running": _int(view.get("in_flight")) or 0,
                "finished": finished,
                "tasks_per_s": finished / window_s,
                "last_heartbeat": beat,
                "heartbeat_age_s": None if beat is None else max(0.0, now - beat),
            }
        )
    finished = sum(row["finished"] for row in rows)
    totals = {
        "endpoints": len(rows),
        "online": sum(row["online"] for row in rows),
        "workers": sum(row["workers"] or 0 for row in rows),
        "busy": sum(row["busy"] or 0 for row in rows),
        "queued": sum(row["queued"] for row in rows),
        "running": sum(row["running"] for row in rows),
        "finished": finished,
        "tasks_per_s": finished / window_s,
    }
    return {
        "version": JSON_VERSION,
        "service": service,
        "now": now,
        "window_s": window_s,
        "endpoints": rows,
        "totals": totals,
    }


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _workers(busy: int | None, workers: int | None) -> str:
    return "-" if workers is None else f"{busy or 0}/{workers}"


@dataclass(frozen=True)
class Column:
    title: str
    right: bool = False


COLUMNS = (
    Column("ENDPOINT"),
    Column("STATE"),
    Column("HOST"),
    Column("WORKERS", right=True),
    Column("QUEUED", right=True),
    Column("RUNNING", right=True),
    Column("DONE/15M", right=True),
    Column("TASKS/S", right=True),
    Column("HEARTBEAT"),
)


def render(status: dict[str, Any]) -> str:
    """The table of a :func:`summarize` document: aligned plain-text columns, one row per
    endpoint, then the totals; names are clipped to :data:`NAME_WIDTH` characters and hosts
    to :data:`HOST_WIDTH`, so rows fit in 100 columns while the numbers fit their titles."""
    rows = status["endpoints"]
    if not rows:
        return "no endpoints: start one with 'fxbroker endpoint start NAME'\n"
    cells = [
        [
            _clip(str(row["name"]), NAME_WIDTH),
            "online" if row["online"] else "offline",
            _clip(row["host"] or "-", HOST_WIDTH),
            _workers(row["busy"], row["workers"]),
            str(row["queued"]),
            str(row["running"]),
            str(row["finished"]),
            f"{row['tasks_per_s']:.2f}",
            _age(row["heartbeat_age_s"]) if row["online"] else "-",
        ]
        for row in rows
    ]
    totals = status["totals"]
    cells.append(
        [
            "TOTAL",
            f"{totals['online']}/{totals['endpoints']} on",
            "",
            _workers(totals["busy"], totals["workers"]),
            str(totals["queued"]),
            str(totals["running"]),
            str(totals["finished"]),
            f"{totals['tasks_per_s']:.2f}",
            "",
        ]
    )
    table = [[column.title for column in COLUMNS], *cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for line in table:
        parts = [
            text.rjust(width) if column.right else text.ljust(width)
            for text, width, column in zip(line, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def client() -> Client:
    """The SDK client ``fxbroker status`` asks with: found as ``Client()`` finds its service,
    no retries (``--watch`` asks again at its own pace)."""
    from sdk.client import Client

    return Client(retry_for_s=0, timeout_s=REQUEST_TIMEOUT_S)


def read(fx: Client) -> dict[str, Any]:
    """The :func:`summarize` document now; raises the SDK's errors."""
    return summarize(fx.get_endpoint_statuses(), service=fx.url)


def show(fx: Client, *, as_json: bool, out: IO[str]) -> None:
    status = read(fx)
    out.write(json.dumps(status, indent=2) + "\n" if as_json else render(status))
    out.flush()


def watch(fx: Client, *, interval_s: float, out: IO[str]) -> int:
    """Redraw the table every ``interval_s`` (at least :data:`MIN_INTERVAL_S`) until Ctrl-C,
    then return 0. On a terminal each frame replaces the last; elsewhere frames follow one
    another. A failed read is shown in place of the table and asked again at the next tick:
    the watch rides out a restart of the service."""
    from sdk.errors import FxBrokerError

    interval_s = max(MIN_INTERVAL_S, interval_s)
    clear = CLEAR if out.isatty() else ""
    try:
        while True:
            started = time.monotonic()
            title = f"{fx.url}  every {interval_s:g} s  {time.strftime('%H:%M:%S')}\n\n"
            try:
                body = render(read(fx))
            except FxBrokerError as exc:
                body = f"{_one_line(exc)}\n"
            out.write(f"{clear}{title}{body}" + ("" if clear else "\n"))
            out.flush()
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def run(*, as_json: bool, watch_s: float | None) -> int:
    """What ``fxbroker status`` does: 0 when shown (or when a watch ends on Ctrl-C); 1 with
    one line on stderr when the service could not be reached or refused. A configuration
    mistake (no service found, a bad CA file) raises :class:`~sdk.errors.ConfigurationError`,
    which the CLI turns into one line and exit status 2."""
    from sdk.errors import ConfigurationError, FxBrokerError

    with client() as fx:
        if watch_s is not None:
            return watch(fx, interval_s=watch_s, out=sys.stdout)
        try:
            show(fx, as_json=as_json, out=sys.stdout)
        except ConfigurationError:
            raise
        except FxBrokerError as exc:
            print(f"fxbroker status: {_one_line(exc)}", file=sys.stderr)
            return 1
    return 0
