"""Every ``fxbroker`` command finds a running ``fxbroker dev`` from ``FXBROKER_HOME`` alone,
as ``Client()`` does: ``fxbroker dev``, the user and token commands and the endpoint commands
all run here as real processes, with no ``DATABASE_URL`` or ``REDIS_URL`` set."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from fxbroker import Client
from sdk.keys import AGENT_GROUP, Keys
from tests.e2e.sockets import SocketWatch

FXBROKER = [sys.executable, "-m", "fxbroker.cli"]
SERVICE_VARIABLES = {
    "DATABASE_URL", "REDIS_URL", "FXBROKER_KEY_PREFIX", "FXBROKER_URL", "FXBROKER_TOKEN",
    "FXBROKER_WS_URL", "FXBROKER_ENDPOINT_ID",
}  # fmt: skip


@dataclass(frozen=True)
class Dev:
    """A running ``fxbroker dev`` and the environment a shell beside it has."""

    home: Path
    env: dict[str, str]
    url: str
    token: str
    endpoint_id: str
    pid: int
    ws_url: str
    banner: str

    def fxbroker(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FXBROKER, *argv], env={**self.env, **env}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def whoami(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.url}/v1/whoami", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    home = tmp_path_factory.mktemp("dev") / "home"
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["FXBROKER_HOME"] = str(home)
    log_path = home.parent / "dev.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*FXBROKER, "dev", "--web-port", "0", "--ws-port", "0", "--engine", "thread",
             "--workers", "1"],
            env=env, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        banner = []
        for line in proc.stdout:  # blocks until the stack has announced itself
            banner.append(line)
            if "Ctrl-C stops it" in line:
                break
        else:
            pytest.fail(f"fxbroker dev exited: {''.join(banner)}{log_path.read_text()}")
        config = json.loads((home / "config.json").read_text())
        assert f"  endpoint:  {config['endpoint_id']}\n" in banner
        yield Dev(home, env, config["url"], config["token"], config["endpoint_id"], proc.pid,
                  config["ws_url"], "".join(banner))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log_path.read_text()
        assert "fxbroker dev stopped." in proc.stdout.read()
        proc.stdout.close()


def test_the_banner_names_the_dashboard_and_a_one_time_sign_in_link(dev: Dev) -> None:
    assert f"  dashboard: {dev.url}/dashboard\n" in dev.banner
    (link,) = [line.split()[2] for line in dev.banner.splitlines() if "sign in:" in line]
    assert link.startswith(f"{dev.url}/dashboard/sign-in?code=")
    assert dev.token not in dev.banner
    first = httpx.get(link)
    assert first.status_code == 303 and first.headers["location"] == "/dashboard"
    assert "fxb_dashboard=" in first.headers["set-cookie"]
    me = httpx.get(f"{dev.url}/dashboard/api/me", cookies=first.cookies)
    assert me.json()["user"] == "dev"
    again = httpx.get(link)  # the code was taken back: no session the second time
    assert again.status_code == 303 and "set-cookie" not in again.headers


def test_the_stack_records_where_its_state_is_for_its_owner_only(dev: Dev) -> None:
    path = dev.home / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    assert record["database_url"] == f"sqlite+aiosqlite:///{dev.home / 'fxbroker.db'}"
    assert record["redis_url"].startswith("redis://127.0.0.1:")
    assert record["key_prefix"] == "fx"


def test_user_and_token_commands_reach_the_dev_stacks_database(dev: Dev) -> None:
    created = dev.fxbroker("user", "create", "bob")
    assert created.returncode == 0, created.stderr
    first = created.stdout.strip()
    assert first.startswith("fxb_") and "\n" not in first
    assert created.stderr.startswith("user bob (")
    assert dev.whoami(first).json()["name"] == "bob"  # the service the stack serves knows it

    issued = dev.fxbroker("user", "token", "bob")
    assert issued.returncode == 0, issued.stderr
    # Not shown to the service before its revocation: it trusts a checked token a few seconds.
    second = issued.stdout.strip()

    listed = dev.fxbroker("user", "tokens", "bob")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line[:8] for line in lines] == [first[:8], second[:8]]
    assert all(line.endswith("live") for line in lines)

    revoked = dev.fxbroker("user", "revoke", second[:8])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stderr == f"revoked the token {second[:8]}...\n"
    assert dev.whoami(second).status_code == 401
    assert dev.whoami(first).status_code == 200
    lines = dev.fxbroker("user", "tokens", "bob").stdout.splitlines()
    assert "revoked" in lines[1] and lines[0].endswith("live")

    again = dev.fxbroker("user", "create", "bob")
    assert again.returncode == 1
    assert again.stderr.startswith("fxbroker user create: ")


def test_an_explicit_database_url_wins_over_the_dev_stack(dev: Dev, tmp_path: Path) -> None:
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    assert dev.fxbroker("db", "upgrade", DATABASE_URL=other).returncode == 0
    created = dev.fxbroker("user", "create", "erin", DATABASE_URL=other)
    assert created.returncode == 0, created.stderr
    assert dev.whoami(created.stdout.strip()).status_code == 401  # not the stack's user
    listed = dev.fxbroker("user", "tokens", "erin")
    assert listed.returncode == 1
    assert "erin" in listed.stderr


def double(x: int) -> int:
    return 2 * x


def test_endpoint_commands_see_and_serve_the_dev_stack(dev: Dev) -> None:
    # With no URL, token or Redis configured, an endpoint registers with the stack and
    # serves through the stack's gateway: the agent process never connects to its Redis.
    env = {**dev.env, "FXBROKER_ENGINE": "thread", "FXBROKER_WORKERS": "1"}
    log_path = dev.home.parent / "gpu.log"
    with log_path.open("w") as log:
        agent = subprocess.Popen([*FXBROKER, "endpoint", "start", "gpu"], env=env,
                                 stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
    assert agent.stdout is not None
    try:
        first_line = agent.stdout.readline()  # printed once registered
        gpu_id = (dev.home / "endpoints" / "gpu" / "endpoint_id").read_text().strip()
        assert first_line.startswith(f"endpoint gpu: {gpu_id} (thread engine, 1 workers"), (
            first_line + log_path.read_text()
        )
        watch = SocketWatch(agent.pid).start()
        with Client(url=dev.url, token=dev.token) as client:
            function_id = client.register_function(double)
            task_ids = [
                client.run(21, endpoint_id=dev.endpoint_id, function_id=function_id),
                client.run(4, endpoint_id=gpu_id, function_id=function_id),
            ]
            results = client.wait(task_ids, timeout_s=60)  # both agents served, so both beat
        watch.stop()
        watch.sample()
        assert [results[t]["result"] for t in task_ids] == [42, 8]
        stack = json.loads((dev.home / "stack.json").read_text())
        assert watch.ports[urlsplit(dev.ws_url).port or 0] > 0, watch.ports
        assert watch.ports[urlsplit(stack["redis_url"]).port or 0] == 0, watch.ports
        with redis.Redis.from_url(stack["redis_url"], decode_responses=True) as store:
            keys = Keys(stack["key_prefix"])
            for eid in (dev.endpoint_id, gpu_id):  # the gateway's reader read for both agents
                consumers = store.xinfo_consumers(keys.endpoint_tasks(eid), AGENT_GROUP)
                assert any(c["name"].startswith("gw-") for c in consumers), consumers
        for name in ("local", "gpu"):  # each registration stored its endpoint's credential
            credential = dev.home / "endpoints" / name / "credential"
            assert stat.S_IMODE(credential.stat().st_mode) == 0o600
            assert credential.read_text().startswith("fxep_")

        listed = dev.fxbroker("endpoint", "list")
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert rows == [
            ["gpu", gpu_id, "running", "(pid", f"{agent.pid})", "online"],
            ["local", dev.endpoint_id, "running", "(pid", f"{dev.pid})", "online"],
        ]

        stopped = dev.fxbroker("endpoint", "stop", "gpu")
        assert (stopped.returncode, stopped.stdout) == (0, "endpoint gpu stopped\n")
        assert agent.wait(30) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()
    rows = [line.split() for line in dev.fxbroker("endpoint", "list").stdout.splitlines()[1:]]
    assert rows[0][:3] == ["gpu", gpu_id, "stopped"]


def test_status_finds_the_dev_stack_with_no_url_or_token(dev: Dev) -> None:
    with Client(url=dev.url, token=dev.token) as client:
        function_id = client.register_function(double)
        task_id = client.run(5, endpoint_id=dev.endpoint_id, function_id=function_id)
        assert client.get_result(task_id, timeout_s=60) == 10  # served, so the agent beats
    shown = dev.fxbroker("status", "--json")  # FXBROKER_HOME alone names the service
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["service"] == dev.url
    local = next(view for view in document["endpoints"] if view["endpoint_id"] == dev.endpoint_id)
    assert (local["name"], local["online"], local["workers"]) == ("local", True, 1)
    assert local["finished"] >= 1
    table = dev.fxbroker("status")
    assert table.returncode == 0, table.stderr
    assert any(line.split()[:2] == ["local", "online"] for line in table.stdout.splitlines())
