"""Finding the service: URL, token, WebSocket URL and default endpoint.

Each value is taken from the first place that has it, read when a client is made (never at
import):

=================  ==================  ======================  ================================
value              argument            environment             ``$FXBROKER_HOME/config.json``
=================  ==================  ======================  ================================
URL                ``url=``            ``FXBROKER_URL``        ``url``
token              ``token=``          ``FXBROKER_TOKEN``      ``token``
WebSocket URL      ``ws_url=``         ``FXBROKER_WS_URL``     ``ws_url`` (else ``GET /v1/info``)
default endpoint   ``endpoint_id=``    ``FXBROKER_ENDPOINT_ID``  ``endpoint_id``
outage bound       ``retry_for_s=``    ``FXBROKER_RETRY_FOR_S``  (not read from the file)
CA file            ``ca_file=``        ``FXBROKER_CA_FILE``    (not read from the file)
WS compression     (none)              ``FXBROKER_WS_COMPRESSION``  (not read from the file)
WS linger          ``ws_linger_s=``    ``FXBROKER_WS_LINGER_S``  (not read from the file)
=================  ==================  ======================  ================================

The outage bound is how long a client retries a service that does not answer (or answers
429/502/503/504) before calls fail, in seconds; 60 by default, 0 turns retries off (see
:mod:`sdk.retry`). The CA file is the PEM file of certificate authorities an ``https://`` or
``wss://`` service's certificate is checked against; without one, ``SSL_CERT_FILE`` or the
default authorities are (:mod:`sdk.tls`).

The WebSocket URL may name several copies of the ws service, comma-separated
(``ws://a:8001,ws://b:8001``): pushed results come from the first, and from the next, round
robin, whenever a connection fails (:mod:`sdk.results`).

WebSocket compression is ``none`` (the default: no permessage-deflate is offered, results
are mostly base64 that compresses little) or ``deflate`` (offered; used if the service has
it on too). The linger is how long the result WebSocket stays open after the last awaited
result, in seconds (default :data:`DEFAULT_WS_LINGER_S`), so back-to-back calls reuse it.

``FXBROKER_HOME`` defaults to ``~/.fxbroker``; ``fxbroker dev`` writes the file with
:func:`write_config`. The file describes one service, so its token, WebSocket URL and
endpoint are used only together with its own URL: pointing ``FXBROKER_URL`` elsewhere never
sends that service the file's token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.errors import ConfigurationError
from sdk.retry import DEFAULT_RETRY_FOR_S, check_retry_for_s
from sdk.tls import ENV_CA_FILE

ENV_URL = "FXBROKER_URL"
ENV_TOKEN = "FXBROKER_TOKEN"
ENV_WS_URL = "FXBROKER_WS_URL"
ENV_ENDPOINT_ID = "FXBROKER_ENDPOINT_ID"
ENV_RETRY_FOR_S = "FXBROKER_RETRY_FOR_S"
ENV_WS_COMPRESSION = "FXBROKER_WS_COMPRESSION"
ENV_WS_LINGER_S = "FXBROKER_WS_LINGER_S"
ENV_HOME = "FXBROKER_HOME"
WS_COMPRESSIONS = ("none", "deflate")
DEFAULT_WS_LINGER_S = 5.0
"""Seconds the result WebSocket stays open with nothing outstanding."""
CONFIG_FILE = "config.json"
_FIELDS = ("url", "ws_url", "token", "endpoint_id")


def fxbroker_home() -> Path:
    """``$FXBROKER_HOME``, else ``~/.fxbroker``."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".fxbroker"


def config_path(home: Path | None = None) -> Path:
    """Where the config file of ``home`` (default :func:`fxbroker_home`) lives."""
    return (fxbroker_home() if home is None else home) / CONFIG_FILE


def read_json_file(path: Path) -> Any:
    """The JSON value in ``path``; ``None`` when there is no such file. A file that cannot
    be read or parsed raises :class:`ConfigurationError` naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc


def read_config(home: Path | None = None) -> dict[str, str]:
    """The config file's values; empty when there is no file.

    A file that is not a JSON object of strings raises :class:`ConfigurationError`."""
    path = config_path(home)
    data = read_json_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object")
    values: dict[str, str] = {}
    for name in _FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigurationError(f"{path}: {name!r} must be a string")
        if value:
            values[name] = value
    return values


def write_config(home: Path, *, url: str, ws_url: str, token: str, endpoint_id: str) -> Path:
    """Write the file :class:`ClientConfig` reads, readable by its owner only; returns its path.

    The file is replaced atomically, so a client never reads half of it."""
    home.mkdir(parents=True, exist_ok=True)
    path = config_path(home)
    tmp = path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
    body = {"url": url, "ws_url": ws_url, "token": token, "endpoint_id": endpoint_id}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def normalize_url(url: str) -> str:
    """A service base URL without a trailing ``/`` or ``/v1``."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Where the service is and who the client is."""

    url: str
    """Base URL of the web service, e.g. ``http://127.0.0.1:8000``."""
    token: str
    """Bearer token sent on every request and WebSocket."""
    ws_url: str | None = None
    """Base URL of the WebSocket service; ``None``: ask the web service (``GET /v1/info``)."""
    endpoint_id: str | None = None
    """Endpoint used when a call names none."""
    retry_for_s: float = DEFAULT_RETRY_FOR_S
    """How long an outage of the service is retried before calls fail; 0: no retries."""
    ca_file: str | None = None
    """PEM file of the certificate authorities to trust; ``None``: ``SSL_CERT_FILE``, else
    the default ones (:mod:`sdk.tls`)."""
    ws_compression: str = "none"
    """``none``: the result WebSocket offers no compression; ``deflate``: permessage-deflate."""
    ws_linger_s: float = DEFAULT_WS_LINGER_S
    """How long the result WebSocket stays open once nothing is outstanding; 0: close at once."""

    def __post_init__(self) -> None:
        if self.ws_compression not in WS_COMPRESSIONS:
            raise ConfigurationError(
                f"ws_compression must be one of {', '.join(WS_COMPRESSIONS)}, "
                f"not {self.ws_compression!r}"
            )
        if not self.ws_linger_s >= 0:  # also refuses NaN
            raise ConfigurationError(f"ws_linger_s must be >= 0 seconds, not {self.ws_linger_s}")

    @classmethod
    def from_env(
        cls,
        *,
        url: str | None = None,
        token: str | None = None,
        ws_url: str | None = None,
        endpoint_id: str | None = None,
        retry_for_s: float | None = None,
        ca_file: str | None = None,
        ws_linger_s: float | None = None,
    ) -> ClientConfig:
        """Resolve each value from the arguments, the environment, then the config file.

        Raises :class:`ConfigurationError` when no URL or no token can be found, or when
        ``FXBROKER_RETRY_FOR_S`` is not a number of seconds ``>= 0``; :class:`ValueError`
        for such a ``retry_for_s`` argument. ``FXBROKER_WS_COMPRESSION`` other than ``none``
        or ``deflate``, or a linger that is not seconds ``>= 0``, raise
        :class:`ConfigurationError` too."""
        env = os.environ
        path = config_path()
        file = read_config()
        resolved_url = url or env.get(ENV_URL) or file.get("url")
        if not resolved_url:
            raise ConfigurationError(
                "no fxbroker service configured: run `fxbroker dev` or set FXBROKER_URL and "
                f"FXBROKER_TOKEN (no URL was given and {path} does not exist)"
            )
        resolved_url = normalize_url(resolved_url)
        # The file's other values belong to the file's service only.
        same = "url" in file and normalize_url(file["url"]) == resolved_url
        own = file if same else {}
        resolved_token = token or env.get(ENV_TOKEN) or own.get("token")
        if not resolved_token:
            raise ConfigurationError(
                f"no token for {resolved_url}: run `fxbroker dev` or set FXBROKER_TOKEN "
                "(or pass token=...)"
            )
        return cls(
            url=resolved_url,
            token=resolved_token,
            ws_url=ws_url or env.get(ENV_WS_URL) or own.get("ws_url"),
            endpoint_id=endpoint_id or env.get(ENV_ENDPOINT_ID) or own.get("endpoint_id"),
            retry_for_s=(
                check_retry_for_s(retry_for_s)
                if retry_for_s is not None
                else _env_retry_for_s(env.get(ENV_RETRY_FOR_S))
            ),
            ca_file=ca_file or env.get(ENV_CA_FILE) or None,
            ws_compression=_env_compression(env.get(ENV_WS_COMPRESSION)),
            ws_linger_s=(
                ws_linger_s if ws_linger_s is not None else _env_linger_s(env.get(ENV_WS_LINGER_S))
            ),
        )

    def require_endpoint(self, endpoint_id: str | None = None) -> str:
        """``endpoint_id`` if given, else the default endpoint, else :class:`ConfigurationError`."""
        chosen = endpoint_id or self.endpoint_id
        if not chosen:
            raise ConfigurationError(
                "no endpoint given: pass endpoint_id=..., set FXBROKER_ENDPOINT_ID, or run "
                "`fxbroker dev` (it writes the id of its local endpoint)"
            )
        return chosen


def _env_retry_for_s(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_FOR_S
    try:
        return check_retry_for_s(float(raw))
    except ValueError as exc:
        raise ConfigurationError(
            f"{ENV_RETRY_FOR_S} must be a number of seconds >= 0 (0: no retries), not {raw!r}"
        ) from exc


def _env_linger_s(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return DEFAULT_WS_LINGER_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{ENV_WS_LINGER_S} must be a number of seconds >= 0, not {raw!r}"
        ) from exc
    if not value >= 0:
        raise ConfigurationError(f"{ENV_WS_LINGER_S} must be a number of seconds >= 0, not {raw!r}")
    return value


def _env_compression(raw: str | None) -> str:
    value = (raw or "").strip() or "none"
    if value not in WS_COMPRESSIONS:
        raise ConfigurationError(
            f"{ENV_WS_COMPRESSION} must be one of {', '.join(WS_COMPRESSIONS)}, not {raw!r}"
        )
    return value
