"""A configuration mistake ends any ``fxbroker`` command with one line on stderr and exit
status 2, never a traceback: real processes, one per mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FXBROKER = [sys.executable, "-m", "fxbroker.cli"]
SERVICES = {"DATABASE_URL": "sqlite+aiosqlite:///unused.db", "REDIS_URL": "redis://127.0.0.1:1/0"}
WS = {"REDIS_URL": "redis://127.0.0.1:1/0", "FXBROKER_WEB_URL": "https://127.0.0.1:1"}


def _break_nothing(home: Path) -> None:
    pass


def _bad_stack_file(home: Path) -> None:
    (home / "stack.json").write_text("{")


def _unreadable_endpoint_config(home: Path) -> None:
    (home / "endpoints" / "lab" / "config.toml").mkdir(parents=True)


def _bad_client_config(home: Path) -> None:
    (home / "config.json").write_text("[]")


CASES = [
    pytest.param(["web"], {**SERVICES, "FXBROKER_MAX_BODY_BYTES": "abc"}, _break_nothing,
                 "fxbroker web: FXBROKER_MAX_BODY_BYTES='abc' is not valid: a whole number",
                 id="web-bad-number"),
    pytest.param(["web"], {**SERVICES, "FXBROKER_KEY_PREFIX": ""}, _break_nothing,
                 "fxbroker web: the key prefix (FXBROKER_KEY_PREFIX) must be non-empty",
                 id="web-empty-key-prefix"),
    pytest.param(["web"], {"REDIS_URL": SERVICES["REDIS_URL"]}, _break_nothing,
                 "fxbroker web: DATABASE_URL is not set", id="web-missing-database"),
    pytest.param(["ws"], {}, _break_nothing, "fxbroker ws: REDIS_URL is not set",
                 id="ws-missing-redis"),
    pytest.param(["amqp-publisher"], {"REDIS_URL": SERVICES["REDIS_URL"]}, _break_nothing,
                 "fxbroker amqp-publisher: FXBROKER_AMQP_URL is not set",
                 id="amqp-publisher-missing-url"),
    pytest.param(["web", "--tls-cert", "server.pem"], SERVICES, _break_nothing,
                 "fxbroker web: set both tls_cert (FXBROKER_TLS_CERT) and tls_key",
                 id="web-certificate-without-key"),
    pytest.param(["web", "--tls-cert", "none.pem", "--tls-key", "none.key"], SERVICES,
                 _break_nothing, "fxbroker web: the TLS certificate 'none.pem' (FXBROKER_TLS_CERT)",
                 id="web-missing-certificate"),
    pytest.param(["ws"], {**WS, "FXBROKER_TLS_CERT": "none.pem", "FXBROKER_TLS_KEY": "none.key"},
                 _break_nothing, "fxbroker ws: the TLS certificate 'none.pem' (FXBROKER_TLS_CERT)",
                 id="ws-missing-certificate"),
    pytest.param(["endpoint", "start", "lab"],
                 {"FXBROKER_URL": "https://127.0.0.1:1", "FXBROKER_TOKEN": "t",
                  "FXBROKER_CA_FILE": "none-ca.pem"},
                 _break_nothing, "fxbroker endpoint start: the CA file 'none-ca.pem'",
                 id="endpoint-missing-ca-file"),
    pytest.param(["user", "create", "x"], {}, _break_nothing,
                 "fxbroker user create: DATABASE_URL is not set and no `fxbroker dev` has run",
                 id="user-without-database"),
    pytest.param(["user", "create", "x"], {"DATABASE_URL": "mysql://db/x"}, _break_nothing,
                 "fxbroker user create: database URL must start with one of",
                 id="user-unknown-database"),
    pytest.param(["user", "tokens", "x"], {}, _bad_stack_file,
                 "fxbroker user tokens: ", id="bad-stack-file"),
    pytest.param(["endpoint", "start", "lab"], {}, _unreadable_endpoint_config,
                 "fxbroker endpoint start: cannot read ", id="unreadable-endpoint-config"),
    pytest.param(["endpoint", "start", "lab"], {**SERVICES, "FXBROKER_WORKERS": "many"},
                 _break_nothing, "fxbroker endpoint start: FXBROKER_WORKERS='many' is not valid",
                 id="agent-bad-number"),
    pytest.param(["endpoint", "configure", "lab", "--engine", "thread", "--accelerators", "0"],
                 {}, _break_nothing, "fxbroker endpoint configure: accelerators need",
                 id="endpoint-bad-combination"),
    pytest.param(["status"], {}, _break_nothing,
                 "fxbroker status: no fxbroker service configured", id="status-without-service"),
    pytest.param(["status", "--json"],
                 {"FXBROKER_URL": "https://127.0.0.1:1", "FXBROKER_TOKEN": "t",
                  "FXBROKER_CA_FILE": "none-ca.pem"},
                 _break_nothing, "fxbroker status: the CA file 'none-ca.pem'",
                 id="status-missing-ca-file"),
    pytest.param(["endpoint", "configure", "lab", "--engine", "rq"], {}, _break_nothing,
                 "fxbroker endpoint configure: engine 'rq' needs rq_redis_url",
                 id="endpoint-rq-without-redis"),
    pytest.param(["endpoint", "configure", "lab", "--engine", "parsl"], {}, _break_nothing,
                 "fxbroker endpoint configure: engine 'parsl' needs parsl_config",
                 id="endpoint-parsl-without-config"),
    pytest.param(["dev", "--web-port", "0", "--ws-port", "0", "--fakeredis"], {},
                 _bad_client_config, "fxbroker dev: ", id="dev-bad-client-config"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "env", "arrange", "starts"), CASES)
def test_a_configuration_mistake_is_one_line_and_exit_2(
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    arrange: Callable[[Path], None],
    starts: str,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    arrange(home)
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    result = subprocess.run(
        [*FXBROKER, *argv], env={**clean, "FXBROKER_HOME": str(home), **env},
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(starts), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
