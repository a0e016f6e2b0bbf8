"""docker-compose.yml is production-shaped and every fxbroker command it names exists.

Where no compose binary is installed to validate the file, the tests here check what it
would: every service a ``depends_on`` names exists (with a healthcheck where it must be
healthy), every named volume is declared, and each fxbroker service's environment, with
``${VAR:-default}`` filled in as compose does, builds that service's settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from amqp_publisher.settings import PublisherSettings
from fxbroker.cli import build_parser
from web_service.settings import WebSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_fxbroker_service_runs_a_real_subcommand(compose: dict[str, Any]) -> None:
    parser = build_parser()
    built = {n: s for n, s in compose["services"].items() if s.get("build") == "."}
    assert set(built) == {"migrate", "web", "ws", "agent", "amqp-publisher"}
    for name, service in built.items():
        args = parser.parse_args(service["command"])
        assert callable(args.func), name
    assert (ROOT / "Dockerfile").read_text().count('ENTRYPOINT ["fxbroker"]') == 1


def test_unknown_subcommand_is_rejected() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["no-such-command"])


def test_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == (
        "yes"
    )
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendfsync") + 1] == "always"  # as the README says
    assert "appendfsync always" in (ROOT / "README.md").read_text()
    devices = services["agent"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert services["web"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["postgres"]["image"].startswith("postgres")


def test_redis_is_private_and_the_agent_reaches_only_ws(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "ports" not in services["redis"] and "expose" not in services["redis"]
    agent = services["agent"]["environment"]
    assert not any("redis" in str(value).lower() for value in agent.values()), agent
    assert "REDIS_URL" not in agent
    assert agent["FXBROKER_WS_URL"] == "ws://ws:8001"
    assert agent["FXBROKER_CREDENTIAL"].startswith("${FXBROKER_CREDENTIAL:?")
    assert "ws" in services["agent"]["depends_on"]
    assert services["agent"]["command"] == ["endpoint", "start", "gpu-node"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_validates_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"FXBROKER_TOKEN": "x", "FXBROKER_CREDENTIAL": "y", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


def _interpolated(environment: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's environment with ``${VAR:-default}`` / ``${VAR:?error}`` filled in from
    ``env``, as compose does (an unset ``:?`` variable fails, as it would there)."""

    def fill(match: re.Match[str]) -> str:
        name, kind, word = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert kind == ":-", f"{name} must be set: {word}"
        return word

    pattern = re.compile(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}")
    return {key: pattern.sub(fill, str(value)) for key, value in environment.items()}


def test_the_file_is_consistent(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared_volumes = set(compose["volumes"])
    for name, service in services.items():
        assert ("image" in service) != ("build" in service), name
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared_volumes, f"{name} mounts undeclared {source}"


def test_rabbitmq_carries_executor_results(compose: dict[str, Any]) -> None:
    """RabbitMQ, the publisher beside it and the web service agree on the broker: one login,
    the service name inside, the published port outside; each environment builds its
    service's settings."""
    services = compose["services"]
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq")
    assert "5672:5672" in rabbitmq["ports"]
    assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])
    assert rabbitmq["hostname"] == "rabbitmq"
    for env in ({}, {"FXBROKER_AMQP_PASSWORD": "s3cret"}):
        login = _interpolated(rabbitmq["environment"], env)
        assert login["RABBITMQ_DEFAULT_USER"] != "guest"  # guest may log in from loopback only
        web_env = _interpolated(services["web"]["environment"], env)
        publisher_env = _interpolated(services["amqp-publisher"]["environment"], env)
        web = WebSettings.from_env(web_env)
        publisher = PublisherSettings.from_env(publisher_env)
        assert publisher.amqp_url == web.amqp_url
        assert publisher.redis_url == web.redis_url
        assert publisher.key_prefix == web.key_prefix
        inside, outside = urlsplit(web.amqp_url), urlsplit(web.amqp_client_url)
        assert (inside.hostname, inside.port) == ("rabbitmq", 5672)
        assert (outside.hostname, outside.port) == ("localhost", 5672)
        for url in (inside, outside):
            assert url.username == login["RABBITMQ_DEFAULT_USER"]
            assert unquote(url.password or "") == login["RABBITMQ_DEFAULT_PASS"]
            assert url.path == "/%2F"
    publisher_service = services["amqp-publisher"]
    assert publisher_service["command"] == ["amqp-publisher"]
    for needed in ("redis", "rabbitmq"):
        assert publisher_service["depends_on"][needed]["condition"] == "service_healthy"
    assert "ports" not in publisher_service
