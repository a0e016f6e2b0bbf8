"""The ``fxbroker`` command: the one place that wires every component together.

fxbroker dev                 the whole platform on the embedded default
fxbroker demo                the same stack plus a sample workload in all three client styles
fxbroker web / fxbroker ws   one web or ws_service process (settings from the environment;
                             --tls-cert/--tls-key serve https:// and wss://)
fxbroker amqp-publisher      publish Globus Compute Executor results to RabbitMQ
                             (REDIS_URL, FXBROKER_AMQP_URL; run one or more copies)
fxbroker endpoint configure NAME [--url ... --engine ... --accelerators 0,1 ...]
                             write $FXBROKER_HOME/endpoints/NAME/config.toml
fxbroker endpoint start NAME register endpoint NAME (once) and run its agent
fxbroker endpoint stop NAME  stop that agent gracefully (SIGTERM; it drains)
fxbroker endpoint list       each endpoint with its id, process and heartbeat state
fxbroker endpoint rotate-credential NAME
                             issue NAME a new credential, stored in its folder (the old
                             one stops working)
fxbroker status [--json] [--watch [--interval S]]
                             your endpoints: online or not, agents, workers, queues, tasks
                             finished lately (a table, JSON, or redrawn until Ctrl-C)
fxbroker db upgrade          apply the SQL migrations
fxbroker user create NAME    create a user and print its first API token
fxbroker user token NAME     print a new API token for NAME
fxbroker user tokens NAME    list NAME's tokens (first characters, dates)
fxbroker user revoke PREFIX  revoke the token that starts with PREFIX (8 characters or more)
fxbroker user client-credentials NAME
                             print a new OAuth2 client id and secret for NAME (for the Globus
                             Compute SDK's GLOBUS_COMPUTE_CLIENT_ID / _SECRET)
fxbroker user revoke-client CLIENT_ID
                             revoke that client credential and the tokens exchanged for it

Every command finds the dev stack from ``$FXBROKER_HOME`` (default ``~/.fxbroker``), as
``Client()`` does: its database for ``db`` and ``user``, its web service (to register) and
ws_service (whose gateway the agent reaches; never its Redis) for ``endpoint``
(:mod:`fxbroker.home`); ``DATABASE_URL``, ``REDIS_URL`` and flags win. A
configuration mistake ends a command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fxbroker import loops
from sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from fxbroker.stack import StackSettings

CONFIGURATION_EXIT = 2
"""The exit status of a configuration mistake (argparse's for a usage mistake): any
:class:`~sdk.errors.ConfigurationError`, which the services' ``SettingsError`` is too."""


def fxbroker_home() -> Path:
    """``$FXBROKER_HOME``, else ``~/.fxbroker``: the folder ``Client()`` reads too."""
    from sdk.config import fxbroker_home

    return fxbroker_home()


def _stack_settings(args: argparse.Namespace) -> StackSettings:
    from fxbroker.stack import StackSettings

    return StackSettings(
        home=Path(args.home) if args.home else fxbroker_home(),
        host=args.host,
        web_port=args.web_port,
        ws_port=args.ws_port,
        redis_url=os.environ.get("REDIS_URL") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        redis_binary=not args.fakeredis,
        amqp_url=os.environ.get("FXBROKER_AMQP_URL") or None,
        workers=args.workers,
        engine=args.engine,
    )


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _dev(settings: StackSettings) -> None:
    from fxbroker.stack import DevStack

    async with DevStack(settings) as stack:
        info = stack.info
        link = await stack.dashboard_sign_in_link()
        print(
            f"fxbroker dev is running (Redis: {info.redis_kind}).\n"
            f"  web:       {info.url}\n  ws:        {info.ws_url}\n"
            f"  endpoint:  {info.endpoint_id}\n  config:    {settings.home / 'config.json'}\n"
            f"  dashboard: {info.url}/dashboard\n"
            f"  sign in:   {link}  (works once)\n"
            "Client() finds it from that file. Ctrl-C stops it.",
            flush=True,
        )
        await _until_signalled()
    print("fxbroker dev stopped.", flush=True)


def cmd_dev(args: argparse.Namespace) -> int:
    loops.run(_dev(_stack_settings(args)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fxbroker.demo import run_demo

    settings = _stack_settings(args)
    if args.home is None:
        import tempfile

        settings = dataclasses.replace(settings, home=Path(tempfile.mkdtemp(prefix="fxbroker-")))
    return run_demo(settings, tasks=args.tasks)


def _service_environ(args: argparse.Namespace) -> dict[str, str]:
    """The process environment with ``--tls-cert`` / ``--tls-key`` in place of their
    variables, so a flag wins and the settings check the pair as they check the variables."""
    flags = {"FXBROKER_TLS_CERT": args.tls_cert, "FXBROKER_TLS_KEY": args.tls_key}
    return {**os.environ, **{name: value for name, value in flags.items() if value is not None}}


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from service_common.tls import server_context
    from web_service.app import create_app
    from web_service.settings import WebSettings

    settings = WebSettings.from_env(_service_environ(args))
    if settings.tls_cert:  # loaded here so a bad file is one line, not uvicorn's traceback
        server_context(settings.tls_cert, settings.tls_key)
    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level="info",
        loop="uvloop", http="httptools", access_log=args.access_log,
        ssl_certfile=settings.tls_cert or None, ssl_keyfile=settings.tls_key or None,
    )  # fmt: skip
    return 0


def cmd_ws(args: argparse.Namespace) -> int:
    from ws_service.server import run_ws
    from ws_service.settings import WsSettings

    settings = dataclasses.replace(
        WsSettings.from_env(_service_environ(args)), host=args.host, port=args.port
    )
    loops.run(run_ws(settings))
    return 0


def cmd_amqp_publisher(args: argparse.Namespace) -> int:
    import logging

    from amqp_publisher.publisher import run_publisher
    from amqp_publisher.settings import PublisherSettings

    settings = PublisherSettings.from_env()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    loops.run(run_publisher(settings))
    return 0


def _endpoint_error(command: str, exc: Exception) -> int:
    print(f"fxbroker endpoint {command}: {exc}", file=sys.stderr)
    return 1


ENDPOINT_OPTIONS: dict[str, str] = {
    "url": "url",
    "token": "token",
    "ws_url": "ws_url",
    "credential": "credential",
    "ca_file": "ca_file",
    "engine": "engine",
    "workers": "workers",
    "max_concurrency": "max_concurrency",
    "walltime_s": "walltime_s",
    "allowed_function": "allowed_functions",
    "allowed_strategy": "allowed_strategies",
    "accelerators": "accelerators",
    "drain_grace_s": "drain_grace_s",
    "max_result_bytes": "max_result_bytes",
    "max_output_chars": "max_output_chars",
    "prefetch": "prefetch",
    "rq_redis_url": "rq_redis_url",
    "rq_queue": "rq_queue",
    "parsl_config": "parsl_config",
    "parsl_run_dir": "parsl_run_dir",
}
"""``fxbroker endpoint configure`` option (argparse dest) -> ``config.toml`` key."""


def cmd_endpoint_configure(args: argparse.Namespace) -> int:
    from fxbroker.endpoints import configure

    changes = {
        key: getattr(args, dest)
        for dest, key in ENDPOINT_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    if isinstance(changes.get("accelerators"), str):
        raw: str = changes["accelerators"]
        changes["accelerators"] = [a.strip() for a in raw.split(",") if a.strip()]
    path = configure(fxbroker_home(), args.name, changes)
    print(f"wrote {path}")
    return 0


def cmd_endpoint_start(args: argparse.Namespace) -> int:
    import logging

    from fxbroker.endpoints import start
    from sdk.errors import FxBrokerError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        start(fxbroker_home(), args.name, os.environ)
    except ConfigurationError:
        raise
    except FxBrokerError as exc:  # the web service refused or is away
        return _endpoint_error("start", exc)
    return 0


def cmd_endpoint_stop(args: argparse.Namespace) -> int:
    from fxbroker.endpoints import stop

    stopped = stop(fxbroker_home(), args.name, timeout_s=args.timeout_s)
    if stopped is None:
        print(f"endpoint {args.name} is not running")
        return 0
    if not stopped:
        print(f"endpoint {args.name} is still draining after {args.timeout_s:g} s", file=sys.stderr)
        return 1
    print(f"endpoint {args.name} stopped")
    return 0


def cmd_endpoint_list(args: argparse.Namespace) -> int:
    from fxbroker.endpoints import list_endpoints

    rows = list_endpoints(fxbroker_home(), os.environ)
    if not rows:
        print(f"no endpoints under {fxbroker_home() / 'endpoints'}")
        return 0
    print(f"{'NAME':<24} {'ENDPOINT ID':<38} {'PROCESS':<22} HEARTBEAT")
    for row in rows:
        print(row.line())
    return 0


def cmd_endpoint_rotate_credential(args: argparse.Namespace) -> int:
    from fxbroker.endpoints import rotate_credential
    from sdk.errors import FxBrokerError

    try:
        rotated = rotate_credential(fxbroker_home(), args.name, os.environ)
    except ConfigurationError:
        raise
    except FxBrokerError as exc:  # the web service refused or is away
        return _endpoint_error("rotate-credential", exc)
    print(
        f"endpoint {args.name} ({rotated.endpoint_id}): new credential {rotated.prefix}... "
        f"stored in {rotated.path}; the old one no longer works"
    )
    return 0


def _add_endpoint_parsers(endpoint: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = endpoint.add_parser("configure", help="write NAME's config.toml (other keys are kept)")
    p.add_argument("name")
    p.add_argument("--url", help="the web service (FXBROKER_URL)")
    p.add_argument("--token", help="an API token, to register the endpoint (FXBROKER_TOKEN)")
    p.add_argument(
        "--ws-url",
        help="the WebSocket service of the gateway, or several copies comma-separated "
        "(FXBROKER_WS_URL)",
    )
    p.add_argument("--credential", help="the endpoint's credential (FXBROKER_CREDENTIAL)")
    p.add_argument(
        "--ca-file",
        help="PEM file of the CAs that sign the services' TLS certificates (FXBROKER_CA_FILE)",
    )
    p.add_argument(
        "--engine", choices=["process", "thread", "rq", "parsl"], help="where def functions run"
    )
    p.add_argument("--workers", type=int, help="def functions at once")
    p.add_argument("--max-concurrency", type=int, help="async def functions at once")
    p.add_argument("--walltime-s", type=float, help="the longest one task may run")
    p.add_argument(
        "--allowed-function", action="append", help="a function id this endpoint runs (repeat)"
    )
    p.add_argument(
        "--allowed-strategy", action="append", help="a serialization strategy id (repeat)"
    )
    p.add_argument("--accelerators", help="comma-separated accelerator ids, e.g. 0,1 ('' for none)")
    p.add_argument("--drain-grace-s", type=float)
    p.add_argument("--max-result-bytes", type=int)
    p.add_argument("--max-output-chars", type=int)
    p.add_argument("--prefetch", type=int, help="def tasks held beyond the free workers")
    p.add_argument(
        "--rq-redis-url",
        help="engine rq: the site's own Redis its rq workers use (FXBROKER_RQ_REDIS_URL)",
    )
    p.add_argument("--rq-queue", help="engine rq: the rq queue of its workers (FXBROKER_RQ_QUEUE)")
    p.add_argument(
        "--parsl-config",
        help="engine parsl: the Python file that defines its Parsl provider "
        "(FXBROKER_PARSL_CONFIG)",
    )
    p.add_argument(
        "--parsl-run-dir", help="engine parsl: Parsl's run directory (FXBROKER_PARSL_RUN_DIR)"
    )
    p.set_defaults(func=cmd_endpoint_configure)

    p = endpoint.add_parser("start", help="register NAME (once) and run its agent")
    p.add_argument("name")
    p.set_defaults(func=cmd_endpoint_start)

    p = endpoint.add_parser("stop", help="stop NAME's agent gracefully and wait for it")
    p.add_argument("name")
    p.add_argument("--timeout-s", type=float, default=120.0, help="how long to wait")
    p.set_defaults(func=cmd_endpoint_stop)

    p = endpoint.add_parser("list", help="each endpoint: id, process, heartbeat")
    p.set_defaults(func=cmd_endpoint_list)

    p = endpoint.add_parser(
        "rotate-credential", help="issue NAME a new credential and store it in its folder"
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_endpoint_rotate_credential)


def cmd_status(args: argparse.Namespace) -> int:
    from fxbroker.status import DEFAULT_INTERVAL_S, run

    if args.interval is not None and not args.watch:
        raise ConfigurationError("--interval needs --watch")
    interval_s = DEFAULT_INTERVAL_S if args.interval is None else args.interval
    return run(as_json=args.json, watch_s=interval_s if args.watch else None)


def _interval_s(raw: str) -> float:
    from fxbroker.status import MIN_INTERVAL_S

    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not value >= MIN_INTERVAL_S:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"at least {MIN_INTERVAL_S:g} s, not {raw}")
    return value


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate ``DATABASE_URL``, else the dev stack's database, else create the SQLite file
    where ``fxbroker dev`` keeps it."""
    from fxbroker.home import database_url, read_stack_record, sqlite_url
    from web_service.schema import upgrade

    home = fxbroker_home()
    fresh = not os.environ.get("DATABASE_URL") and read_stack_record(home) is None
    upgrade(sqlite_url(home) if fresh else database_url(os.environ, home))
    print("database is at the latest revision", flush=True)
    return 0


def _database_url() -> str:
    from fxbroker.home import database_url

    return database_url(os.environ, fxbroker_home())


def cmd_user_create(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError, create_user

    try:
        user_id, token = asyncio.run(create_user(_database_url(), args.name))
    except AccountError as exc:
        print(f"fxbroker user create: {exc}", file=sys.stderr)
        return 1
    print(token)
    print(f"user {args.name} ({user_id}); the token is shown only once", file=sys.stderr)
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError, issue_token

    try:
        print(asyncio.run(issue_token(_database_url(), args.name)))
    except AccountError as exc:
        print(f"fxbroker user token: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_user_tokens(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError, list_tokens

    try:
        tokens = asyncio.run(list_tokens(_database_url(), args.name))
    except AccountError as exc:
        print(f"fxbroker user tokens: {exc}", file=sys.stderr)
        return 1
    for token in tokens:
        revoked = f"revoked {token.revoked_at.isoformat()}" if token.revoked_at else "live"
        print(f"{token.prefix}  created {token.created_at.isoformat()}  {revoked}")
    return 0


def cmd_user_revoke(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError, revoke_token

    try:
        asyncio.run(revoke_token(_database_url(), args.token_prefix))
    except AccountError as exc:
        print(f"fxbroker user revoke: {exc}", file=sys.stderr)
        return 1
    print(f"revoked the token {args.token_prefix[:8]}...", file=sys.stderr)
    return 0


def cmd_user_client_credentials(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError
    from web_service.client_credentials import mint_client_credential

    try:
        minted = asyncio.run(mint_client_credential(_database_url(), args.name))
    except AccountError as exc:
        print(f"fxbroker user client-credentials: {exc}", file=sys.stderr)
        return 1
    print(f"GLOBUS_COMPUTE_CLIENT_ID={minted.client_id}")
    print(f"GLOBUS_COMPUTE_CLIENT_SECRET={minted.secret}")
    print(f"client credentials of {args.name}; the secret is shown only once", file=sys.stderr)
    return 0


def cmd_user_revoke_client(args: argparse.Namespace) -> int:
    from web_service.accounts import AccountError
    from web_service.client_credentials import revoke_client_credential

    try:
        asyncio.run(revoke_client_credential(_database_url(), args.client_id))
    except AccountError as exc:
        print(f"fxbroker user revoke-client: {exc}", file=sys.stderr)
        return 1
    print(f"revoked the client credential {args.client_id}", file=sys.stderr)
    return 0


def _add_stack_options(p: argparse.ArgumentParser, *, web_port: int, ws_port: int) -> None:
    p.add_argument("--home", default=None, help="state folder (default $FXBROKER_HOME)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--web-port", type=int, default=web_port, help="0 picks a free port")
    p.add_argument("--ws-port", type=int, default=ws_port, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the agent")
    p.add_argument("--engine", choices=["process", "thread"], default="process")
    p.add_argument(
        "--fakeredis", action="store_true", help="use fakeredis even if redis-server exists"
    )


def _add_tls_options(p: argparse.ArgumentParser, scheme: str) -> None:
    p.add_argument(
        "--tls-cert", help=f"serve {scheme} with this PEM certificate (FXBROKER_TLS_CERT)"
    )
    p.add_argument("--tls-key", help="the certificate's PEM private key (FXBROKER_TLS_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxbroker", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", help="run the whole platform on the embedded default")
    _add_stack_options(p, web_port=8000, ws_port=8001)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("demo", help="run the platform and a sample workload, then exit")
    _add_stack_options(p, web_port=0, ws_port=0)
    p.add_argument("--tasks", type=int, default=1000, help="tasks per client style")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("web", help="run the web service (DATABASE_URL, REDIS_URL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--access-log", action="store_true", help="log every request (off: /metrics counts them)"
    )
    _add_tls_options(p, "https://")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("ws", help="run the WebSocket service (REDIS_URL, FXBROKER_WEB_URL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    _add_tls_options(p, "wss://")
    p.set_defaults(func=cmd_ws)

    p = sub.add_parser(
        "amqp-publisher",
        help="publish Executor results to RabbitMQ (REDIS_URL, FXBROKER_AMQP_URL)",
    )
    p.set_defaults(func=cmd_amqp_publisher)

    p = sub.add_parser(
        "status", help="your endpoints, agents, workers and queues (FXBROKER_URL, else dev)"
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    shape.add_argument("--watch", action="store_true", help="redraw the table until Ctrl-C")
    p.add_argument(
        "--interval", type=_interval_s, help="seconds between redraws (1 or more; default 2)"
    )
    p.set_defaults(func=cmd_status)

    endpoint = sub.add_parser("endpoint", help="endpoints").add_subparsers(
        dest="endpoint_command", required=True
    )
    _add_endpoint_parsers(endpoint)

    db = sub.add_parser("db", help="the SQL schema").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    user = sub.add_parser("user", help="users and API tokens").add_subparsers(
        dest="user_command", required=True
    )
    p = user.add_parser("create", help="create a user and print its first token")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_create)
    p = user.add_parser("token", help="print a new token for a user")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_token)
    p = user.add_parser("tokens", help="list a user's tokens by their first characters")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_tokens)
    p = user.add_parser("revoke", help="revoke a token, named by its first 8+ characters")
    p.add_argument("token_prefix")
    p.set_defaults(func=cmd_user_revoke)
    p = user.add_parser(
        "client-credentials", help="print a new OAuth2 client id and secret for a user"
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_user_client_credentials)
    p = user.add_parser(
        "revoke-client", help="revoke a client credential and the tokens exchanged for it"
    )
    p.add_argument("client_id")
    p.set_defaults(func=cmd_user_revoke_client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:  # a service's SettingsError is one too
        subcommand = getattr(args, f"{args.command}_command", None)
        name = " ".join(["fxbroker", args.command, *([subcommand] if subcommand else [])])
        message = " ".join(str(exc).splitlines())
        print(f"{name}: {message}", file=sys.stderr)
        return CONFIGURATION_EXIT
    return code


if __name__ == "__main__":
    sys.exit(main())
