"""``fxbroker demo`` — the README's main command — runs the whole platform and a sample workload,
on a local redis-server and on the fakeredis fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = [sys.executable, "-m", "fxbroker.cli", "demo", "--web-port", "0", "--ws-port", "0"]


def _run_demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["FXBROKER_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [*DEMO, "--home", str(tmp_path / "home"), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs a redis-server binary")
def test_demo_on_embedded_redis_server(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, "--tasks", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Redis redis-server" in result.stdout
    assert "demo passed" in result.stdout
    assert result.stdout.count(" ok") == 4
    assert "ValueError: cannot handle 7" in result.stdout
    config = (tmp_path / "home" / "config.json").read_text()
    assert '"endpoint_id"' in config and '"token"' in config


def test_demo_on_fakeredis_fallback(tmp_path: Path) -> None:
    result = _run_demo(tmp_path, "--fakeredis", "--tasks", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Redis fakeredis" in result.stdout
    assert "demo passed" in result.stdout
