"""The dashboard in a real browser: headless Chromium (the system's ``chromium``, driven by
Playwright; never a browser Playwright downloads) against ``fxbroker web``/``ws`` and an
endpoint agent started as processes (:func:`tests.e2e.conftest.running_platform`).

Each test opens its own browser context (its own cookies) and saves a screenshot of what it
checked as ``<name>.png`` in its output directory: ``$FXBROKER_TEST_OUTPUT/dashboard/<test>``
when that variable is set (``.ci/run`` sets it to ``test-output/`` and keeps it), else the
test's pytest ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import Platform, running_platform
from tests.e2e.processes import FXBROKER

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 60_000
"""How long a test waits for the page to show a state: generous, never a sleep."""


@pytest.fixture(scope="module")
def platform(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(redis_url, tmp_path_factory.mktemp("platform")) as started:
        yield started


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("the browser tests need the system chromium (.ci/run installs it)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Chromium refuses to start as root with its sandbox; CI runs as root.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        opened.close()


def create_user(platform: Platform, name: str) -> str:
    """A new user's API token, made with ``fxbroker user create``."""
    return subprocess.run(
        [*FXBROKER, "user", "create", name], env=platform.env, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip


def sign_in(context: BrowserContext, platform: Platform, token: str) -> Page:
    """A page of ``context`` signed in with ``token`` through the sign-in form."""
    page = context.new_page()
    page.goto(f"{platform.url}/dashboard")
    page.fill("#token", token)
    page.click("#sign-in-form button")
    page.wait_for_selector("#who:not([hidden])")
    return page


@pytest.fixture
def output_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where the test leaves its screenshots (see the module docstring)."""
    root = os.environ.get("FXBROKER_TEST_OUTPUT")
    if not root:
        return tmp_path
    folder = Path(root) / "dashboard" / str(request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, output_dir: Path, name: str) -> Path:
    path = output_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path
