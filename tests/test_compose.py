"""docker-compose.yml is production-shaped and every fxbroker command it names exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fxbroker.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_fxbroker_service_runs_a_real_subcommand(compose: dict[str, Any]) -> None:
    parser = build_parser()
    built = {n: s for n, s in compose["services"].items() if s.get("build") == "."}
    assert set(built) == {"migrate", "web", "ws", "agent"}
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
