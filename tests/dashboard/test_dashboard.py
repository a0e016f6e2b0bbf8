"""The dashboard, driven in headless Chromium against the platform's real processes: sign in,
see the endpoint online, watch 200 tasks and the chart move without a reload, read a failed
task's traceback, cancel a running task, stay blind to another user's work, and shrug off a
forged cross-site request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from fxbroker import Client
from tests.dashboard.conftest import create_user, screenshot, sign_in
from tests.e2e.conftest import Platform
from tests.sdk.workload import fail, nap

TASKS = 200


def count(page: Page, name: str) -> int:
    return int(page.text_content(f"#count-{name}") or "0")


def test_sign_in_shows_the_endpoint_online(
    platform: Platform, context: BrowserContext, output_dir: Path
) -> None:
    page = sign_in(context, platform, platform.token)
    card = page.locator(f'article[data-endpoint-id="{platform.endpoint_id}"]')
    expect(card.locator(".badge")).to_have_text("online")
    expect(card.locator(".workers")).to_contain_text("of 2 workers")
    expect(page.locator("#user")).to_have_text("e2e")
    screenshot(page, output_dir, "endpoints")


def test_200_tasks_move_the_counts_and_the_chart_without_a_reload(
    platform: Platform, context: BrowserContext, output_dir: Path
) -> None:
    page = sign_in(context, platform, platform.token)
    card = page.locator(f'article[data-endpoint-id="{platform.endpoint_id}"]')
    expect(card.locator(".badge")).to_have_text("online")
    page.evaluate("window.notReloaded = true")
    finished_before = count(page, "finished")
    chart_before = card.locator("polyline").get_attribute("points")
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(nap)
        batch = client.create_batch()
        for _ in range(TASKS):
            batch.add(fid, args=(0.1,))
        task_ids = client.batch_run(platform.endpoint_id, batch)
        # expect() polls the page (its scripts stay under the page's CSP, no eval)
        expect(page.locator("#count-queued")).not_to_have_text("0")
        expect(page.locator("#count-running")).not_to_have_text("0")
        screenshot(page, output_dir, "tasks-moving")
        client.wait(task_ids, timeout_s=120, poll_s=0.5)
    expect(page.locator("#count-finished")).to_have_text(str(finished_before + TASKS))
    expect(page.locator("#count-queued")).to_have_text("0")
    expect(page.locator("#count-running")).to_have_text("0")
    expect(card.locator(".finished-window")).not_to_have_text("0")
    assert card.locator("polyline").get_attribute("points") != chart_before
    assert page.evaluate("window.notReloaded") is True
    page.click('nav a[data-view="tasks"]')
    expect(page.locator("#tasks tbody tr").first).to_be_visible()
    assert page.locator("#tasks tbody tr").count() <= 200  # the page lists at most 200
    group = page.locator("#groups tbody tr").first  # the newest group: these 200
    expect(group.locator("td").nth(2)).to_have_text(str(TASKS))
    expect(group.locator("td").nth(5)).to_have_text(str(TASKS))
    screenshot(page, output_dir, "tasks-finished")


def test_a_failed_tasks_page_shows_its_traceback(
    platform: Platform, context: BrowserContext, output_dir: Path
) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(fail)
        task_id = client.run("dashboard boom", endpoint_id=platform.endpoint_id, function_id=fid)
        client.wait([task_id], timeout_s=60, poll_s=0.2)
    page = sign_in(context, platform, platform.token)
    page.click('nav a[data-view="tasks"]')
    page.select_option("#filter-state", "failed")
    page.click(f'#tasks tr[data-task-id="{task_id}"] a')
    expect(page.locator("#task-state")).to_have_text("failed")
    exception = page.locator("#task-exception")
    expect(exception).to_contain_text("ValueError: dashboard boom")
    expect(exception).to_contain_text("Traceback")
    expect(exception).to_contain_text("in fail")
    screenshot(page, output_dir, "failed-task")


def test_cancel_from_the_page_ends_a_running_task_cancelled(
    platform: Platform, context: BrowserContext, output_dir: Path
) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        task_id, page = running_task_page(client, context, platform)
        page.click("#task-cancel")
        expect(page.locator("#task-state")).to_have_text("cancelled")
        client.wait([task_id], timeout_s=60, poll_s=0.2)
        assert client.get_task(task_id)["state"] == "cancelled"
    screenshot(page, output_dir, "cancelled-task")


def test_a_second_user_sees_none_of_the_first_users_work(
    platform: Platform, context: BrowserContext, output_dir: Path
) -> None:
    with Client(url=platform.url, token=platform.token) as client:
        fid = client.register_function(nap)
        task_id = client.run(0.0, endpoint_id=platform.endpoint_id, function_id=fid)
        client.wait([task_id], timeout_s=60, poll_s=0.2)
    page = sign_in(context, platform, create_user(platform, "dashboard-second"))
    expect(page.locator("#user")).to_have_text("dashboard-second")
    expect(page.locator("#endpoints")).to_have_text("No endpoints.")
    assert page.locator(f'[data-endpoint-id="{platform.endpoint_id}"]').count() == 0
    assert page.locator("#tasks tbody tr").count() == 0
    assert page.locator("#functions tbody tr").count() == 0
    page.goto(f"{platform.url}/dashboard#/task/{task_id}")
    expect(page.locator("#task-state")).to_contain_text("no task")
    reply = context.request.get(f"{platform.url}/dashboard/api/tasks/{task_id}")
    assert reply.status == 404
    screenshot(page, output_dir, "second-user")


def running_task_page(
    client: Client, context: BrowserContext, platform: Platform
) -> tuple[str, Page]:
    """A task that naps two minutes, and a signed-in page showing it running."""
    task_id = client.run(120.0, endpoint_id=platform.endpoint_id,
                         function_id=client.register_function(nap))  # fmt: skip
    page = sign_in(context, platform, platform.token)
    page.goto(f"{platform.url}/dashboard#/task/{task_id}")
    expect(page.locator("#task-state")).to_have_text("running")
    return task_id, page


class _Attacker(BaseHTTPRequestHandler):
    """Serves a page that tries to cancel a task on the dashboard from another origin."""

    target = ""

    def do_GET(self) -> None:
        html = f"""<!doctype html><body>
<form id="f" method="POST" action="{self.target}" target="sink"></form>
<iframe name="sink"></iframe>
<script>
fetch("{self.target}", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"content-type": "text/plain"}}, body: "x"}})
  .finally(() => {{ document.getElementById("f").submit(); document.title = "sent"; }});
</script></body>"""
        body = html.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_forged_cross_site_request_changes_nothing(
    platform: Platform,
    context: BrowserContext,
    output_dir: Path,
    attacker: tuple[ThreadingHTTPServer, str],
) -> None:
    _, evil = attacker
    with Client(url=platform.url, token=platform.token) as client:
        task_id, page = running_task_page(client, context, platform)
        csrf = page.evaluate("fetch('/dashboard/api/me').then(r => r.json()).then(b => b.csrf)")
        cancel_url = f"{platform.url}/dashboard/api/tasks/{task_id}/cancel"

        # A page on another loopback port, in the same browser (the victim's cookie is there).
        _Attacker.target = cancel_url
        forged = context.new_page()
        forged.goto(evil)
        forged.wait_for_function("document.title === 'sent'")
        forged.wait_for_load_state("load")
        # Even with the CSRF token, a foreign Origin is refused (and nothing is changed).
        refused = context.request.post(
            cancel_url, headers={"origin": evil, "x-csrf-token": str(csrf)}
        )
        assert refused.status == 403
        screenshot(forged, output_dir, "forged-page")

        assert client.get_task(task_id)["state"] == "running"
        page.reload()
        expect(page.locator("#task-state")).to_have_text("running")
        screenshot(page, output_dir, "still-running")
        client.cancel(task_id)  # the owner's own cancel still works
        client.wait([task_id], timeout_s=60, poll_s=0.2)
