"""``fxbroker status``: the table, ``--json`` and ``--watch``, run as processes against real
``fxbroker web`` / ``ws`` processes and a real agent; and its errors."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from fxbroker.cli import main
from fxbroker.status import render, summarize
from sdk.client import Client
from tests.cli.services import FXBROKER, WebProcess

JSON_ENDPOINT_FIELDS = {
    "endpoint_id", "name", "owned", "online", "agent", "host", "engine", "workers", "busy",
    "queued", "running", "finished", "tasks_per_s", "last_heartbeat", "heartbeat_age_s",
}  # fmt: skip
JSON_TOTAL_FIELDS = {
    "endpoints", "online", "workers", "busy", "queued", "running", "finished", "tasks_per_s",
}  # fmt: skip


def double(x: int) -> int:
    return 2 * x


def status_env(web_process: WebProcess) -> dict[str, str]:
    return {**web_process.env, "FXBROKER_URL": web_process.url,
            "FXBROKER_TOKEN": web_process.token}  # fmt: skip


def status(web_process: WebProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FXBROKER, "status", *args], env=status_env(web_process),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_status_shows_a_served_endpoint_online_and_counts_an_agentless_queue(
    home: Path, web_process: WebProcess
) -> None:
    env = web_process.env
    assert main(["endpoint", "configure", "lab", "--url", web_process.url,
                 "--token", web_process.token, "--engine", "thread", "--workers", "2",
                 "--drain-grace-s", "0"]) == 0  # fmt: skip
    log = (home / "agent.log").open("wb")
    agent = subprocess.Popen([*FXBROKER, "endpoint", "start", "lab"], env=env,
                             stdout=subprocess.PIPE, stderr=log)  # fmt: skip
    try:
        assert agent.stdout is not None
        agent.stdout.readline()  # printed once registered
        lab = (home / "endpoints" / "lab" / "endpoint_id").read_text().strip()
        with Client(web_process.url, web_process.token, retry_for_s=0) as fx:
            function_id = fx.register_function(double)
            done = fx.run(21, endpoint_id=lab, function_id=function_id)
            assert fx.get_result(done, timeout_s=60) == 42  # served: the agent beats
            idle = fx.register_endpoint("idle")  # no agent will ever serve it
            batch = fx.create_batch()
            for i in range(5):
                batch.add(function_id, (i,))
            assert len(fx.batch_run(idle, batch)) == 5

        table = status(web_process)
        assert table.returncode == 0, table.stderr
        assert table.stderr == ""
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["ENDPOINT", "STATE", "HOST", "WORKERS", "QUEUED", "RUNNING",
                                    "DONE/15M", "TASKS/S", "HEARTBEAT"]  # fmt: skip
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert set(rows) == {"lab", "idle", "TOTAL"}
        assert rows["lab"][1] == "online" and rows["lab"][3].endswith("/2")
        assert rows["lab"][6] == "1"  # the one task it finished
        assert rows["lab"][-1] == "ago"  # "3s ago"
        assert rows["idle"][1:7] == ["offline", "-", "-", "5", "0", "0"]
        assert rows["TOTAL"][1:3] == ["1/2", "on"] and rows["TOTAL"][4:6] == ["5", "0"]
        assert max(len(line) for line in lines) <= 100
        right = [lines[0].index(title) + len(title) - 1 for title in ("QUEUED", "TASKS/S")]
        for line in lines[1:]:  # numbers are right-aligned under their titles
            assert all(line[column] != " " for column in right), line

        answer = status(web_process, "--json")
        assert answer.returncode == 0, answer.stderr
        document = json.loads(answer.stdout)
        assert (document["version"], document["service"]) == (1, web_process.url)
        assert document["window_s"] == 900
        views = {view["name"]: view for view in document["endpoints"]}
        assert set(views) == {"lab", "idle"}
        for view in views.values():
            assert set(view) == JSON_ENDPOINT_FIELDS
        assert (views["idle"]["endpoint_id"], views["idle"]["owned"]) == (idle, True)
        assert (views["idle"]["queued"], views["idle"]["running"]) == (5, 0)
        assert (views["idle"]["online"], views["idle"]["workers"]) == (False, None)
        assert views["idle"]["finished"] == 0 and views["idle"]["last_heartbeat"] is None
        assert (views["lab"]["online"], views["lab"]["workers"], views["lab"]["engine"]) == (
            True, 2, "thread",
        )  # fmt: skip
        assert (views["lab"]["queued"], views["lab"]["finished"]) == (0, 1)
        assert views["lab"]["tasks_per_s"] == 1 / 900
        assert 0 <= views["lab"]["heartbeat_age_s"] < 60
        assert set(document["totals"]) == JSON_TOTAL_FIELDS
        assert document["totals"] | {"tasks_per_s": None} == {
            "endpoints": 2, "online": 1, "workers": 2, "busy": views["lab"]["busy"],
            "queued": 5, "running": 0, "finished": 1, "tasks_per_s": None,
        }  # fmt: skip
        assert main(["endpoint", "stop", "lab"]) == 0
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(30)
        if agent.stdout is not None:
            agent.stdout.close()
        log.close()


async def test_watch_redraws_until_sigint_then_exits_0(web_process: WebProcess) -> None:
    with Client(web_process.url, web_process.token, retry_for_s=0) as fx:
        fx.register_endpoint("watched")
    watcher = await asyncio.create_subprocess_exec(
        *FXBROKER, "status", "--watch", "--interval", "1", env=status_env(web_process),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        frames: list[list[str]] = [[]]
        while len(frames) < 3:  # two whole frames, then the start of a third
            line = (await asyncio.wait_for(watcher.stdout.readline(), 30)).decode()
            assert line, "the watch ended by itself"
            if line.startswith(web_process.url) and frames[-1]:
                frames.append([])
            frames[-1].append(line)
        for frame in frames[:2]:
            assert "every 1 s" in frame[0]
            assert any(row.startswith("watched ") for row in frame)
            assert any(row.startswith("TOTAL ") for row in frame)
        watcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watcher.wait(), 30) == 0
        assert watcher.stderr is not None
        assert await watcher.stderr.read() == b""  # no traceback
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


def test_an_unreachable_service_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {"FXBROKER_HOME": str(tmp_path), "FXBROKER_URL": "http://127.0.0.1:1",
           "FXBROKER_TOKEN": "fxb_unused", "PATH": "/usr/bin:/bin"}  # fmt: skip
    for args in ([], ["--json"]):
        result = subprocess.run([*FXBROKER, "status", *args], env=env, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.startswith("fxbroker status: could not reach http://127.0.0.1:1")
        assert result.stderr.count("\n") == 1 and result.stdout == ""


async def test_a_watch_shows_an_unreachable_service_and_keeps_asking(tmp_path: Path) -> None:
    env = {"FXBROKER_HOME": str(tmp_path), "FXBROKER_URL": "http://127.0.0.1:1",
           "FXBROKER_TOKEN": "fxb_unused"}  # fmt: skip
    watcher = await asyncio.create_subprocess_exec(
        *FXBROKER, "status", "--watch", "--interval", "1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        failures = 0
        while failures < 2:
            line = (await asyncio.wait_for(watcher.stdout.readline(), 30)).decode()
            assert line, "the watch ended by itself"
            failures += line.startswith("could not reach http://127.0.0.1:1")
        watcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watcher.wait(), 30) == 0
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


def test_a_bad_interval_is_refused(tmp_path: Path) -> None:
    for args, error in (
        (["--watch", "--interval", "0.5"], "--interval: at least 1 s, not 0.5"),
        (["--interval", "5"], "fxbroker status: --interval needs --watch"),
        (["--watch", "--json"], "not allowed with argument"),
    ):
        result = subprocess.run([*FXBROKER, "status", *args],
                                env={"FXBROKER_HOME": str(tmp_path)}, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2
        assert error in result.stderr, result.stderr


def test_the_table_clips_long_names_and_hosts_to_fit_100_columns() -> None:
    long = "n" * 60
    answer: dict[str, Any] = {
        "now": 1000.0, "window_s": 900,
        "endpoints": [{"endpoint_id": "e", "name": long, "owned": True, "online": True,
                       "host": long, "workers": 64, "running": 64, "queued": 999_999,
                       "in_flight": 99_999, "finished": 9_999_999 // 10,
                       "last_heartbeat": 999.0}],
    }  # fmt: skip
    lines = render(summarize(answer, service="http://x")).splitlines()
    assert len(lines) == 3
    assert max(len(line) for line in lines) <= 100
    assert lines[1].split()[:2] == ["n" * 17 + "~", "online"]
    assert lines[1].endswith("1s ago")
    assert render(summarize({"endpoints": []}, service="http://x")).startswith("no endpoints")
