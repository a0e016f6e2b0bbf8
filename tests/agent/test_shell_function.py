"""ShellFunctions run by a real agent. fxbroker's own: the arguments shell-quoted, an exit
code as a result (or a failure with ``check=True``), the process group killed at the
walltime, the output's tail kept. Globus Compute's: its ``ShellResult`` back, run in a
sandbox of its own that leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from globus_compute_sdk import ShellFunction as GlobusShellFunction
from globus_compute_sdk import ShellResult as GlobusShellResult

from endpoint_agent import Agent
from sdk.errors import CommandFailed, CommandTimedOut
from sdk.messages import remote_exception
from sdk.serialize import serialize
from sdk.shell import ShellFunction, ShellResult
from sdk.states import TaskState
from tests.agent.gateway_stack import GatewayEndpoint, settings_for


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _existing(paths: set[str]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_shell_functions_run_on_an_agent(
    endpoint: GatewayEndpoint, tmp_path: Path, engine: str
) -> None:
    marker = tmp_path / "injected"
    tricky = f'it\'s "$HOME" `touch {marker}`; $(touch {marker}) && echo no | cat > {marker} *'
    echo = await endpoint.register(serialize(ShellFunction("echo {message}")))
    mixed = "echo out; echo err >&2; exit 3"
    lenient = await endpoint.register(serialize(ShellFunction(mixed)))
    strict = await endpoint.register(serialize(ShellFunction(mixed, check=True)))
    chatty = await endpoint.register(serialize(ShellFunction("seq 1 {n}")))
    lines = await endpoint.register(serialize(ShellFunction("seq 1 {n}", snippet_lines=3)))
    pidfile = tmp_path / "child.pid"
    slow = ShellFunction("echo started; sleep 60 & echo $! > {pidfile}; wait", walltime_s=1.0)
    stuck = await endpoint.register(serialize(slow))

    echoed = await endpoint.submit(echo, message=tricky)
    exited = await endpoint.submit(lenient)
    checked = await endpoint.submit(strict)
    long_output = await endpoint.submit(chatty, n=100_000)
    last_lines = await endpoint.submit(lines, n=100_000)
    timed_out = await endpoint.submit(stuck, pidfile=pidfile)

    async with Agent(settings_for(endpoint, engine=engine)) as agent:
        await agent.run(burst=True)

    result = await endpoint.result(echoed)
    assert isinstance(result, ShellResult)
    assert (result.returncode, result.stdout, result.stderr) == (0, tricky + "\n", "")
    assert result.cmd.startswith("echo 'it'") and not marker.exists()

    result = await endpoint.result(exited)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.cmd == mixed

    record = await endpoint.failure(checked)
    assert (record["type"], record["module"]) == ("CommandFailed", "sdk.errors")
    assert record["message"].startswith(f"the command exited with code 3: {mixed}")
    error = remote_exception(checked, TaskState.FAILED, record)
    assert isinstance(error, CommandFailed)
    assert (error.returncode, error.stdout, error.stderr) == (3, "out\n", "err\n")

    result = await endpoint.result(long_output)
    assert result.returncode == 0 and len(result.stdout) == 10_000
    assert result.stdout.endswith("\n99999\n100000\n")
    assert (await endpoint.result(last_lines)).stdout == "99998\n99999\n100000\n"

    record = await endpoint.failure(timed_out)
    assert record["type"] == "CommandTimedOut"
    assert record["message"].startswith(
        "the command ran past its walltime of 1 s; its process group was killed: echo started;"
    )
    error = remote_exception(timed_out, TaskState.FAILED, record)
    assert isinstance(error, CommandTimedOut) and error.stdout == "started\n"
    assert not _alive(int(pidfile.read_text()))


@pytest.mark.parametrize("engine", ["process", "thread"])
async def test_a_globus_compute_shell_function_runs_in_a_sandbox_of_its_own(
    endpoint: GatewayEndpoint, tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the workers start here (spawned, or threads)
    shell = await endpoint.register(serialize(GlobusShellFunction("echo {x}; pwd; exit 4")))
    as_dict = GlobusShellFunction("echo hi >&2", return_dict=True)
    listed = await endpoint.register(serialize(as_dict))
    calls = await endpoint.submit_many(shell, [((), {"x": n}) for n in range(4)])
    plain = await endpoint.submit(listed)

    async with Agent(settings_for(endpoint, engine=engine)) as agent:
        await agent.run(burst=True)

    sandboxes = set()
    for n, task_id in enumerate(calls):
        result = await endpoint.result(task_id)
        assert isinstance(result, GlobusShellResult)
        assert (result.returncode, result.cmd) == (4, f"echo {n}; pwd; exit 4")
        assert result.exception_name == "subprocess.CalledProcessError"
        assert result.stderr == ""  # no word of a missing sandbox
        printed, sandbox = result.stdout.splitlines()
        assert printed == str(n) and Path(sandbox).name.startswith("fxbroker-shell-")
        sandboxes.add(sandbox)
    assert len(sandboxes) == 4 and not _existing(sandboxes)
    assert await endpoint.result(plain) == {
        "cmd": "echo hi >&2",
        "stdout": "",
        "stderr": "hi\n",
        "returncode": 0,
        "exception_name": None,
    }
    assert os.listdir(tmp_path) == []  # no output files left where the workers run
    assert Path.cwd() == tmp_path and "GC_TASK_SANDBOX_DIR" not in os.environ
