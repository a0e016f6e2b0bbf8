"""``fxbroker endpoint configure|start|stop|list|rotate-credential``: the config file,
environment overrides, a real agent process started, listed, and stopped with a drain, and
the endpoint's credential stored on first start and rotated by a real process."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from endpoint_agent.accelerators import detect_accelerators
from fxbroker.cli import main
from fxbroker.endpoints import agent_settings, read_config, register
from sdk.keys import Keys
from sdk.messages import hash_field, stored_fields
from sdk.serialize import deserialize, pack_payload
from sdk.states import TaskState
from tests.agent.helpers import HOLD, Endpoint, Gate
from tests.cli.services import FXBROKER, WebProcess
from web_service.taskstore.tasks import new_task_ids


def test_configure_writes_a_private_toml_file_and_keeps_other_keys(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["endpoint", "configure", "gpu-1", "--url", "http://127.0.0.1:8000",
                 "--token", "fxb_secret", "--engine", "process", "--workers", "4",
                 "--max-concurrency", "50", "--walltime-s", "600",
                 "--allowed-function", "fn-a", "--allowed-function", "fn-b",
                 "--allowed-strategy", "st", "--accelerators", "0,1"]) == 0  # fmt: skip
    path = home / "endpoints" / "gpu-1" / "config.toml"
    assert f"wrote {path}" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["endpoint", "configure", "gpu-1", "--workers", "8", "--drain-grace-s", "5"]) == 0

    assert tomllib.loads(path.read_text()) == {
        "url": "http://127.0.0.1:8000",
        "token": "fxb_secret",
        "engine": "process",
        "workers": 8,
        "max_concurrency": 50,
        "walltime_s": 600.0,
        "allowed_functions": ["fn-a", "fn-b"],
        "allowed_strategies": ["st"],
        "accelerators": ["0", "1"],
        "drain_grace_s": 5.0,
    }


def test_configure_an_rq_endpoint(home: Path) -> None:
    assert main(["endpoint", "configure", "site", "--engine", "rq", "--workers", "16",
                 "--rq-redis-url", "redis://rq.site:6379/1", "--rq-queue", "gpu"]) == 0  # fmt: skip
    path = home / "endpoints" / "site" / "config.toml"
    config = tomllib.loads(path.read_text())
    assert config == {"engine": "rq", "workers": 16, "rq_redis_url": "redis://rq.site:6379/1",
                      "rq_queue": "gpu"}  # fmt: skip
    settings = agent_settings(config, GATEWAY_ENV, endpoint_id="ep-1")
    assert (settings.engine, settings.rq_redis_url, settings.rq_queue) == (
        "rq",
        "redis://rq.site:6379/1",
        "gpu",
    )
    assert settings.accelerators == ()


def test_configure_a_parsl_endpoint(home: Path) -> None:
    assert main(["endpoint", "configure", "hpc", "--engine", "parsl", "--workers", "64",
                 "--parsl-config", "slurm.py", "--parsl-run-dir", "parsl-runs"]) == 0  # fmt: skip
    path = home / "endpoints" / "hpc" / "config.toml"
    config = tomllib.loads(path.read_text())
    assert config == {"engine": "parsl", "workers": 64, "parsl_config": "slurm.py",
                      "parsl_run_dir": "parsl-runs"}  # fmt: skip
    settings = agent_settings(config, GATEWAY_ENV, endpoint_id="ep-1")
    assert (settings.engine, settings.parsl_config, settings.parsl_run_dir) == (
        "parsl",
        "slurm.py",
        "parsl-runs",
    )


def test_configure_refuses_invalid_settings(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint", "configure", "bad", "--engine", "thread", "--accelerators", "0"]) == 2
    assert "accelerators need engine='process'" in capsys.readouterr().err
    assert main(["endpoint", "configure", "bad", "--allowed-strategy", "zz"]) == 2
    assert "unknown strategies ['zz']" in capsys.readouterr().err
    assert main(["endpoint", "configure", "../escape", "--workers", "2"]) == 2
    assert not (home / "endpoints" / "bad").exists()
    folder = home / "endpoints" / "typo"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("wrokers = 3\n")
    with pytest.raises(Exception, match="unknown setting 'wrokers'"):
        read_config(folder)


GATEWAY_ENV = {"FXBROKER_WS_URL": "ws://127.0.0.1:2", "FXBROKER_CREDENTIAL": "fxep_env"}


def test_the_environment_overrides_the_file() -> None:
    config = {"ws_url": "ws://127.0.0.1:1", "credential": "fxep_file", "engine": "thread",
              "workers": 3, "walltime_s": 60.0, "allowed_functions": ["fn-a"]}  # fmt: skip
    environ = {**GATEWAY_ENV, "FXBROKER_WORKERS": "5"}

    settings = agent_settings(config, environ, endpoint_id="ep-1")

    assert (settings.ws_url, settings.credential) == ("ws://127.0.0.1:2", "fxep_env")
    assert (settings.engine, settings.workers, settings.walltime_s) == ("thread", 5, 60.0)
    assert settings.allowed_functions == frozenset({"fn-a"})


def test_accelerators_are_detected_unless_configured() -> None:
    environ = {**GATEWAY_ENV, "CUDA_VISIBLE_DEVICES": "0,1", "PATH": ""}
    detected = agent_settings({}, environ, endpoint_id="ep-1", detect=detect_accelerators)
    assert (detected.accelerators, detected.workers) == (("0", "1"), 2)
    off = agent_settings({"accelerators": []}, environ, endpoint_id="ep-1",
                         detect=detect_accelerators)  # fmt: skip
    assert off.accelerators == ()
    threads = agent_settings({"engine": "thread"}, environ, endpoint_id="ep-1",
                             detect=detect_accelerators)  # fmt: skip
    assert threads.accelerators == ()


async def test_start_list_and_stop_a_real_agent(
    home: Path,
    web_process: WebProcess,
    redis_url: str,
    aredis: aioredis.Redis,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = home / "endpoints" / "lab"
    assert main(["endpoint", "configure", "lab", "--url", web_process.url,
                 "--token", web_process.token, "--engine", "thread", "--workers", "1",
                 "--drain-grace-s", "0"]) == 0  # fmt: skip
    # The agent is given no Redis: it reaches the platform through the ws service's gateway.
    env = {k: v for k, v in web_process.env.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    log = (home / "agent.log").open("wb")
    agent = await asyncio.create_subprocess_exec(
        *FXBROKER, "endpoint", "start", "lab", env=env, stdout=subprocess.PIPE, stderr=log
    )
    try:
        assert agent.stdout is not None
        await asyncio.wait_for(agent.stdout.readline(), 60)  # printed once registered
        endpoint = Endpoint(aredis, keys, (folder / "endpoint_id").read_text().strip())
        hold = await endpoint.register(HOLD)
        gate = Gate(endpoint)
        task_id = await endpoint.submit(hold, *gate.args(redis_url))
        await gate.wait_started()  # the agent runs, from the file's settings
        capsys.readouterr()
        assert main(["endpoint", "list"]) == 0
        out = capsys.readouterr().out
        assert "lab" in out and endpoint.endpoint_id in out
        assert f"running (pid {agent.pid})" in out

        assert await asyncio.to_thread(main, ["endpoint", "stop", "lab"]) == 0
        assert "endpoint lab stopped" in capsys.readouterr().out
        assert await asyncio.wait_for(agent.wait(), 30) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        log.close()
        await gate.release()

    assert not (folder / "agent.pid").exists()
    assert main(["endpoint", "list"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(["endpoint", "stop", "lab"]) == 0
    assert "is not running" in capsys.readouterr().out
    # Drained with no grace: the running task went back to the stream for another agent.
    fields = await endpoint.task(task_id)
    assert (fields["state"], fields.get("attempts", "0")) == (TaskState.WAITING, "0")
    assert await endpoint.redis.xlen(endpoint.stream) == 1 and await endpoint.pending() == 0


def run_one_task(redis_url: str, keys: Keys, endpoint_id: str) -> object:
    """Queue one task straight into Redis and block until its result is written."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        code = "st\nadd:def add(a, b):\n    return a + b\n"
        client.set(keys.function_code("fn-add"), code)
        [task_id] = new_task_ids(1)
        client.hset(keys.task(task_id), mapping=stored_fields({  # the web service's record
            "user_id": "u-1", "endpoint_id": endpoint_id, "function_id": "fn-add",
            "task_group_id": "g-1", "state": "waiting-for-ep",
        }))  # fmt: skip
        client.xadd(keys.endpoint_tasks(endpoint_id),
                    {"task_id": task_id, "payload": pack_payload((2, 3))})  # fmt: skip
        assert client.xread({keys.task_group_results("g-1"): "0"}, block=30_000)
        return deserialize(str(client.hget(keys.task(task_id), hash_field("result"))))
    finally:
        client.close()


def test_first_start_registers_the_endpoint_and_list_shows_it_online(
    home: Path, web_process: WebProcess, redis_url: str, key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    env = web_process.env
    log = (home / "agent.log").open("wb")
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert main(["endpoint", "configure", "lab", "--url", web_process.url,
                     "--token", web_process.token, "--engine", "thread",
                     "--workers", "1"]) == 0  # fmt: skip
        agent = subprocess.Popen([*FXBROKER, "endpoint", "start", "lab"], env=env,
                                 stdout=subprocess.PIPE, stderr=log)  # fmt: skip
        assert agent.stdout is not None
        first_line = agent.stdout.readline().decode()  # printed once registered
        folder = home / "endpoints" / "lab"
        endpoint_id = (folder / "endpoint_id").read_text().strip()
        assert first_line.startswith(f"endpoint lab: {endpoint_id} (thread engine, 1 workers")
        # the first start stored the credential the registration issued, privately
        credential_file = folder / "credential"
        assert stat.S_IMODE(credential_file.stat().st_mode) == 0o600
        credential = credential_file.read_text().strip()
        assert web_process.session(credential).json()["endpoint_id"] == endpoint_id
        assert run_one_task(redis_url, Keys(key_prefix), endpoint_id) == 5  # it serves, so beats
        capsys.readouterr()
        assert main(["endpoint", "list"]) == 0
        row = capsys.readouterr().out.splitlines()[1]
        assert row.split()[:2] == ["lab", endpoint_id]
        assert row.endswith("online")
        assert main(["endpoint", "stop", "lab"]) == 0
        assert agent.wait(30) == 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(30)
        if agent is not None and agent.stdout is not None:
            agent.stdout.close()
        log.close()


def test_rotate_credential_stores_a_new_one_and_ends_the_old(
    home: Path, web_process: WebProcess
) -> None:
    assert main(["endpoint", "configure", "lab", "--url", web_process.url,
                 "--token", web_process.token]) == 0  # fmt: skip
    folder = home / "endpoints" / "lab"
    # Never started here: the command registers the endpoint; that credential is the new one.
    first = subprocess.run([*FXBROKER, "endpoint", "rotate-credential", "lab"],
                           env=web_process.env, capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr
    endpoint_id = (folder / "endpoint_id").read_text().strip()
    old = (folder / "credential").read_text().strip()
    assert web_process.session(old).json()["endpoint_id"] == endpoint_id

    rotated = subprocess.run([*FXBROKER, "endpoint", "rotate-credential", "lab"],
                             env=web_process.env, capture_output=True, text=True)  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    new = (folder / "credential").read_text().strip()
    assert new.startswith("fxep_") and new != old
    assert stat.S_IMODE((folder / "credential").stat().st_mode) == 0o600
    assert rotated.stdout == (
        f"endpoint lab ({endpoint_id}): new credential {new[:12]}... stored in "
        f"{folder / 'credential'}; the old one no longer works\n"
    )
    assert new not in rotated.stdout + rotated.stderr  # shown once: only in the file
    assert web_process.session(old).status_code == 401
    assert web_process.session(new).json()["endpoint_id"] == endpoint_id
    assert sorted(p.name for p in folder.iterdir()) == ["config.toml", "credential", "endpoint_id"]


def test_a_first_start_that_finds_the_endpoint_registered_stores_no_credential(
    home: Path, web_process: WebProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Another machine registered it: its credential is not this machine's to replace."""
    with httpx.Client(base_url=web_process.url) as http:
        created = http.post("/v1/endpoints", json={"name": "lab"},
                            headers={"Authorization": f"Bearer {web_process.token}"})  # fmt: skip
    theirs = created.json()["credential"]
    folder = home / "endpoints" / "lab"
    merged = {"FXBROKER_URL": web_process.url, "FXBROKER_TOKEN": web_process.token}

    assert register(folder, "lab", merged) == created.json()["endpoint_id"]

    assert not (folder / "credential").exists()
    assert "rotate-credential lab" in caplog.text
    assert web_process.session(theirs).status_code == 200  # still theirs, still working
