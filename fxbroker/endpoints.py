"""Endpoints on this machine: what ``fxbroker endpoint configure|start|stop|list`` and
``rotate-credential`` do.

Each endpoint ``NAME`` has a folder ``$FXBROKER_HOME/endpoints/NAME/``::

    config.toml   what ``configure`` wrote (optional: ``start`` also works from the
                  environment alone); readable by its owner only, as it may hold a token
    endpoint_id   the id the web service gave the endpoint on its first start
    credential    the endpoint's credential, issued when that start created the endpoint
                  or by ``rotate-credential``; readable by its owner only
    agent.pid     the process id of the agent while it runs

Every setting of the file has an environment variable, and a variable that is set wins
over the file (:data:`SETTINGS` lists them). ``start`` registers the endpoint with the web
service the first time (``url`` and ``token``, else the service ``Client()`` finds; it needs
no web service once the id is stored), writes the pid file, and runs the agent until SIGTERM
or SIGINT, which drain it. A first start that finds the endpoint already registered (by
another machine, say) is shown no credential and stores none: copy that machine's, or
``rotate-credential`` (which ends the old one for every agent). The agent reaches its
endpoint only through the gateway of the WebSocket service (``ws_url``, else the one the web
service announces), with the credential; with the dev stack running that is the stack's ws.
It is never given a Redis URL: Redis stays private to the services. ``fxbroker dev`` keeps its
own endpoint in ``local``, with its own pid while it runs.
When neither the file nor the environment names accelerators, the process engine pins one
worker to each accelerator the node has (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``);
``accelerators = []`` in the file turns that off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import select
import signal
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import tomli_w

from endpoint_agent.accelerators import detect_accelerators
from endpoint_agent.settings import AgentSettings
from fxbroker import loops
from sdk import tls
from sdk.config import ClientConfig
from sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from sdk.client import Client

CONFIG_FILE = "config.toml"
ID_FILE = "endpoint_id"
CREDENTIAL_FILE = "credential"
PRIVATE_MODE = 0o600
PID_FILE = "agent.pid"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STATUS_TIMEOUT_S = 3.0
CREDENTIAL_SHOWN = 12
"""How many first characters of a credential the commands print (what the owner sees)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One key of ``config.toml``: the variable that overrides it and its TOML type."""

    env: str
    kind: type


SETTINGS: dict[str, Setting] = {
    "url": Setting("FXBROKER_URL", str),
    "token": Setting("FXBROKER_TOKEN", str),
    "ws_url": Setting("FXBROKER_WS_URL", str),
    "credential": Setting("FXBROKER_CREDENTIAL", str),
    "ca_file": Setting("FXBROKER_CA_FILE", str),
    "engine": Setting("FXBROKER_ENGINE", str),
    "workers": Setting("FXBROKER_WORKERS", int),
    "max_concurrency": Setting("FXBROKER_MAX_CONCURRENCY", int),
    "walltime_s": Setting("FXBROKER_WALLTIME_S", float),
    "allowed_functions": Setting("FXBROKER_ALLOWED_FUNCTIONS", list),
    "allowed_strategies": Setting("FXBROKER_ALLOWED_STRATEGIES", list),
    "accelerators": Setting("FXBROKER_ACCELERATORS", list),
    "drain_grace_s": Setting("FXBROKER_DRAIN_GRACE_S", float),
    "max_result_bytes": Setting("FXBROKER_MAX_RESULT_BYTES", int),
    "max_output_chars": Setting("FXBROKER_MAX_OUTPUT_CHARS", int),
    "prefetch": Setting("FXBROKER_PREFETCH", int),
    "rq_redis_url": Setting("FXBROKER_RQ_REDIS_URL", str),
    "rq_queue": Setting("FXBROKER_RQ_QUEUE", str),
    "parsl_config": Setting("FXBROKER_PARSL_CONFIG", str),
    "parsl_run_dir": Setting("FXBROKER_PARSL_RUN_DIR", str),
}
"""``config.toml`` key -> the environment variable that overrides it, and its type."""


def endpoint_dir(home: Path, name: str) -> Path:
    """``home/endpoints/name``, refusing names that are not plain folder names."""
    if not NAME_PATTERN.match(name):
        raise ConfigurationError(
            f"endpoint name {name!r}: use letters, digits, '.', '_' and '-' (up to 100)"
        )
    return home / "endpoints" / name


# -- config.toml -----------------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    """The endpoint's ``config.toml`` ({} when there is none), checked key by key."""
    path = folder / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    for key, value in data.items():
        _check(key, value, str(path))
    return data


def _check(key: str, value: Any, where: str) -> None:
    setting = SETTINGS.get(key)
    if setting is None:
        raise ConfigurationError(f"{where}: unknown setting {key!r}; known: {sorted(SETTINGS)}")
    if setting.kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif setting.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, setting.kind) and not isinstance(value, bool)
    if not ok:
        kind = "a list of strings" if setting.kind is list else f"a {setting.kind.__name__}"
        raise ConfigurationError(f"{where}: {key} must be {kind}, not {value!r}")


def configure(home: Path, name: str, changes: Mapping[str, Any]) -> Path:
    """Write ``changes`` into the endpoint's ``config.toml`` (other keys are kept), after
    checking that the result makes valid agent settings. Returns the file's path."""
    folder = endpoint_dir(home, name)
    config = read_config(folder)
    for key, value in changes.items():
        _check(key, value, "configure")
        config[key] = value
    check = {"FXBROKER_CREDENTIAL": "unknown-yet", "FXBROKER_WS_URL": "ws://unknown-yet"}
    agent_settings(config, check, endpoint_id="check")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        tomli_w.dump(config, out)
    return path


# -- from config and environment to agent settings -------------------------------------


def merged_environment(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the agent is configured with: the file's values as variables, then
    every variable of ``environ`` that is set (non-empty) on top."""
    merged: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, list):
            merged[SETTINGS[key].env] = ",".join(value)
        elif isinstance(value, float):
            merged[SETTINGS[key].env] = repr(value) if math.isfinite(value) else str(value)
        else:
            merged[SETTINGS[key].env] = str(value)
    for setting in SETTINGS.values():
        if environ.get(setting.env):
            merged[setting.env] = environ[setting.env]
    return merged


def agent_settings(
    config: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    endpoint_id: str,
    detect: Callable[[Mapping[str, str]], Sequence[str]] | None = None,
) -> AgentSettings:
    """The agent's settings from the file and the environment (the environment wins).

    ``detect`` finds the node's accelerators when neither source names any and the engine
    is the process engine."""
    merged = merged_environment(config, environ)
    named = "accelerators" in config or environ.get("FXBROKER_ACCELERATORS")
    if detect is not None and not named and merged.get("FXBROKER_ENGINE", "process") == "process":
        found = detect(environ)
        if found:
            merged["FXBROKER_ACCELERATORS"] = ",".join(found)
    return AgentSettings.from_env(merged, endpoint_id=endpoint_id)


# -- start, stop, list -----------------------------------------------------------------


def stored_endpoint_id(folder: Path) -> str | None:
    path = folder / ID_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def store_endpoint_id(folder: Path, endpoint_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ID_FILE).write_text(endpoint_id + "\n")


def stored_credential(folder: Path) -> str | None:
    path = folder / CREDENTIAL_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def store_credential(folder: Path, credential: str) -> Path:
    """Write the endpoint's credential, readable by its owner only, replacing any: the new
    file is complete before it takes the old one's name, so a reader never sees half."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CREDENTIAL_FILE
    partial = folder / f".{CREDENTIAL_FILE}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # a leftover file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as out:
            out.write(credential + "\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _client(merged: Mapping[str, str]) -> Client:
    """An SDK client of the endpoint's web service: its own URL and token, else the
    service ``Client()`` finds."""
    from sdk.client import Client

    url, token = merged.get("FXBROKER_URL") or None, merged.get("FXBROKER_TOKEN") or None
    return Client(url=url, token=token, ca_file=merged.get("FXBROKER_CA_FILE") or None)


def _register(folder: Path, name: str, merged: Mapping[str, str]) -> tuple[str, str | None]:
    """Register ``name`` with the web service; store its id, and its credential when this
    registration created the endpoint (returned too; None when it existed already)."""
    with _client(merged) as client:
        endpoint_id, credential = client.register_endpoint_with_credential(name)
    store_endpoint_id(folder, endpoint_id)
    if credential is not None:
        store_credential(folder, credential)
    return endpoint_id, credential


def register(folder: Path, name: str, merged: Mapping[str, str]) -> str:
    """The endpoint's stored id, else register ``name`` (:func:`_register`)."""
    endpoint_id = stored_endpoint_id(folder)
    if endpoint_id is not None:
        return endpoint_id
    endpoint_id, credential = _register(folder, name, merged)
    if credential is None:
        log.warning(
            "endpoint %s was registered before, elsewhere: no credential was issued here; "
            "copy the one it has or run 'fxbroker endpoint rotate-credential %s'",
            name,
            name,
        )
    return endpoint_id


@dataclass(frozen=True)
class RotatedCredential:
    """What ``rotate-credential`` did: never the credential itself, which is in ``path``."""

    endpoint_id: str
    prefix: str
    path: Path


def rotate_credential(home: Path, name: str, environ: Mapping[str, str]) -> RotatedCredential:
    """Issue endpoint ``name`` a new credential and store it in its folder; the old one stops
    working for every agent of the endpoint. Registers the endpoint first if this machine
    has not (the registration's own credential then is the new one)."""
    folder = endpoint_dir(home, name)
    merged = merged_environment(read_config(folder), environ)
    endpoint_id = stored_endpoint_id(folder)
    credential = None
    if endpoint_id is None:
        endpoint_id, credential = _register(folder, name, merged)
    if credential is None:
        with _client(merged) as client:
            credential = client.rotate_endpoint_credential(endpoint_id)
    path = store_credential(folder, credential)
    return RotatedCredential(endpoint_id, credential[:CREDENTIAL_SHOWN], path)


def running_pid(folder: Path) -> int | None:
    """The pid in the endpoint's pid file when that process is alive; a stale file is
    removed."""
    path = folder / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


@contextlib.contextmanager
def pid_file(folder: Path, name: str) -> Iterator[None]:
    """Hold the endpoint's pid file for this process while the block runs.

    Raises :class:`ConfigurationError` when another live process holds it."""
    pid = running_pid(folder)
    if pid is not None and pid != os.getpid():
        raise ConfigurationError(f"endpoint {name} is already running (pid {pid})")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PID_FILE
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(path.read_text().strip()) == os.getpid():
                path.unlink()


def start(home: Path, name: str, environ: Mapping[str, str]) -> None:
    """Register (once) and run the endpoint's agent in this process until a signal.

    Without a URL and token (file or environment) it registers with the service
    ``Client()`` finds (the dev stack's, where one runs). The agent reaches the endpoint
    only through the gateway, with the endpoint's credential (:func:`through_gateway`)."""
    from endpoint_agent.agent import run_agent

    folder = endpoint_dir(home, name)
    config = read_config(folder)
    pid = running_pid(folder)
    if pid is not None:
        raise ConfigurationError(f"endpoint {name} is already running (pid {pid})")
    # Settings are checked before anything is registered or written.
    merged = merged_environment(config, environ)
    check = dict(environ)  # the credential (and maybe the ws URL) are known once registered
    check.setdefault("FXBROKER_CREDENTIAL", "unknown-yet")
    if "FXBROKER_WS_URL" not in merged:
        check["FXBROKER_WS_URL"] = "ws://unknown-yet"
    settings = agent_settings(config, check, endpoint_id="unregistered", detect=detect_accelerators)
    endpoint_id = register(folder, name, merged)
    settings = dataclasses.replace(settings, endpoint_id=endpoint_id)
    settings = through_gateway(settings, folder, merged)
    pinned = f", accelerators {','.join(settings.accelerators)}" if settings.accelerators else ""
    with pid_file(folder, name):
        print(
            f"endpoint {name}: {endpoint_id} ({settings.engine} engine, {settings.workers} "
            f"workers{pinned})",
            flush=True,
        )
        loops.run(run_agent(settings))


def through_gateway(
    settings: AgentSettings, folder: Path, merged: Mapping[str, str]
) -> AgentSettings:
    """``settings`` made to reach the endpoint through the gateway with its credential
    (``FXBROKER_CREDENTIAL``, the file's ``credential``, else the one stored at
    registration). The gateway's WebSocket service is ``FXBROKER_WS_URL`` (or the file's
    ``ws_url``), else the one the web service announces (``GET /v1/info``, asked with the
    endpoint's URL and token as the SDK does)."""
    credential = merged.get("FXBROKER_CREDENTIAL") or stored_credential(folder)
    if credential is None:
        raise ConfigurationError(
            f"endpoint {folder.name} has no credential: configure one with "
            f"'fxbroker endpoint configure {folder.name} --credential ...' or run "
            f"'fxbroker endpoint rotate-credential {folder.name}'"
        )
    ws_url = merged.get("FXBROKER_WS_URL")
    if not ws_url:
        with _client(merged) as client:
            ws_url = client.ws_url
    return dataclasses.replace(settings, credential=credential, ws_url=ws_url)


def stop(home: Path, name: str, *, timeout_s: float) -> bool | None:
    """SIGTERM the endpoint's agent and wait up to ``timeout_s`` for it to exit.

    ``None``: it was not running; ``True``: it exited; ``False``: still draining."""
    folder = endpoint_dir(home, name)
    pid = running_pid(folder)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        exited = True
    else:
        exited = wait_for_exit(pid, timeout_s)
    if exited:
        (folder / PID_FILE).unlink(missing_ok=True)
    return exited


@dataclass(frozen=True)
class EndpointRow:
    """One line of ``fxbroker endpoint list``."""

    name: str
    endpoint_id: str | None
    pid: int | None
    online: bool | None
    """From the heartbeat, through the web service; ``None`` when it could not be asked."""

    def line(self) -> str:
        process = f"running (pid {self.pid})" if self.pid is not None else "stopped"
        heartbeat = {True: "online", False: "offline", None: "unknown"}[self.online]
        return f"{self.name:<24} {self.endpoint_id or '-':<38} {process:<22} {heartbeat}"


def list_endpoints(home: Path, environ: Mapping[str, str]) -> list[EndpointRow]:
    """Every endpoint configured or started under ``home``, by name."""
    root = home / "endpoints"
    rows = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        endpoint_id = stored_endpoint_id(folder)
        online = None
        if endpoint_id is not None:
            service = _service(merged_environment(read_config(folder), environ))
            online = None if service is None else heartbeat_online(*service[:2], endpoint_id,
                                                                   ca_file=service[2])  # fmt: skip
        rows.append(EndpointRow(folder.name, endpoint_id, running_pid(folder), online))
    return rows


def _service(merged: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    """The URL, token and CA file of the endpoint's web service: its own settings, else the
    service ``Client()`` finds (``$FXBROKER_HOME/config.json``); ``None`` when there is none."""
    try:
        config = ClientConfig.from_env(
            url=merged.get("FXBROKER_URL") or None,
            token=merged.get("FXBROKER_TOKEN") or None,
            ca_file=merged.get("FXBROKER_CA_FILE") or None,
        )
    except ConfigurationError:
        return None
    return config.url, config.token, config.ca_file


def heartbeat_online(
    url: str, token: str, endpoint_id: str, *, ca_file: str | None = None
) -> bool | None:
    """Whether the endpoint's agents beat (``GET /v1/endpoints/{id}/status``); ``None`` when
    the web service is not configured or does not answer. Over https the certificate is
    verified as every client verifies it (``ca_file``, else ``SSL_CERT_FILE``, else the
    default CAs: ``sdk.tls``)."""
    if not url or not token:
        return None
    try:
        context = tls.client_context(ca_file)
        reply = httpx.get(
            f"{url.rstrip('/')}/v1/endpoints/{endpoint_id}/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=STATUS_TIMEOUT_S,
            verify=context if context is not None else True,
        )
    except (httpx.HTTPError, ConfigurationError):
        return None
    if reply.status_code != 200:
        return None
    return bool(reply.json().get("online"))


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` exits within ``timeout_s`` (it need not be our child): a
    blocking wait on a pidfd, no polling loop."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    finally:
        os.close(pidfd)
