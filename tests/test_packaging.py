"""The wheel holds only the platform's packages (not ``bench`` or ``tests``), and building it
prints no deprecation warning: built offline with setuptools' own build API from a copy of
the checkout."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PLATFORM = {
    "sdk",
    "service_common",
    "web_service",
    "ws_service",
    "endpoint_agent",
    "amqp_publisher",
    "fxbroker",
    "migrations",
}
BUILD = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"


def _setuptools_floor() -> Requirement:
    build_system = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    requirements = [Requirement(r) for r in build_system["requires"]]
    return next(r for r in requirements if r.name == "setuptools")


def test_the_wheel_holds_the_platform_only_and_builds_without_deprecations(
    tmp_path: Path,
) -> None:
    floor = _setuptools_floor()
    installed = importlib.metadata.version("setuptools")
    if not floor.specifier.contains(installed):
        pytest.fail(f"setuptools {installed} is installed; the build needs {floor} (`make` "
                    "installs it)")  # fmt: skip
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*_cache", "build", "dist",
                                      "*.egg-info", "*.db"),
    )  # fmt: skip
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-W", "always", "-c", BUILD, str(out)], cwd=source,
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-4000:]
    assert "deprecat" not in output.lower(), output[-4000:]

    wheel = out / built.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == PLATFORM
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as archive:
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode().splitlines()


def test_the_globus_extra_names_the_compute_sdk_as_the_dev_extra_pins_it() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = {
        extra: [str(r) for r in map(Requirement, extras[extra]) if r.name == "globus-compute-sdk"]
        for extra in ("globus", "dev")
    }
    assert pins["globus"] == pins["dev"] == ["globus-compute-sdk>=2.30"]


def test_the_parsl_extra_names_parsl_as_the_dev_extra_pins_it() -> None:
    """The suite (``make test`` installs the dev extra) runs the parsl engine's tests, and
    ``python -m bench`` (the bench extra) its engine rows, against the Parsl the ``parsl``
    extra gives agents."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = {
        extra: [str(r) for r in map(Requirement, extras[extra]) if r.name == "parsl"]
        for extra in ("parsl", "dev", "bench")
    }
    assert pins["parsl"] == pins["dev"] == pins["bench"] == ["parsl>=2026.10.26"]
