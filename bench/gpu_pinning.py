"""Check on a node with NVIDIA GPUs that the endpoint agent pins its workers to them.

``python -m bench.gpu_pinning [--json FILE]`` runs the platform on its embedded default,
starts endpoints the way an operator does (``fxbroker endpoint start NAME`` in a process of
its own) and runs tasks that report what CUDA shows them (through PyTorch, which the node
must have):

1. **detected**: an endpoint configured with no accelerators finds the node's GPUs
   (``nvidia-smi -L``) and runs one worker per GPU; each task sees exactly one device, the one
   ``nvidia-smi`` lists under the id its worker was pinned to (matched by UUID). The first
   task on a worker pays CUDA's start; the later ones reuse the worker's context, and their
   times are reported. A task that kills its worker (``os._exit``) fails alone, and the
   worker that replaces it is pinned to the same GPU.
2. **restricted**: an endpoint told ``FXBROKER_ACCELERATORS=0,N`` (``N`` one past the node's
   last GPU) runs two workers, and two tasks held at once land one on each: the worker pinned
   to ``0`` sees that GPU, the one pinned to ``N`` sees none. The pinning is what the process
   is shown, not a label.

Every check prints PASS or FAIL; the exit status is 0 only when all pass (2 when the node has
no GPU to check). ``--accelerators 0`` stands in for detection on a node without
``nvidia-smi``, to try the flow (the checks then fail: no device is visible).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from endpoint_agent.accelerators import detect_accelerators
from fxbroker.demo import running_stack
from fxbroker.endpoints import ID_FILE, endpoint_dir
from fxbroker.stack import StackInfo, StackSettings
from sdk.client import Client
from sdk.errors import TaskFailed

MATRIX = 8192
"""The side of the bf16 matrices each probe multiplies on its GPU."""

TASK_TIMEOUT_S = 300.0


def probe(side: int, hold_s: float) -> dict[str, Any]:
    """What CUDA shows this task: its worker's pin, the devices, the first one's UUID, and
    the seconds one ``side`` x ``side`` bf16 product took on it (after the first's warm-up)."""
    import importlib
    import os
    import time

    seen: dict[str, Any] = {
        "pid": os.getpid(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    start = time.perf_counter()
    try:
        torch = importlib.import_module("torch")  # the node's, if it has one
    except ImportError:
        seen["torch"] = None
        time.sleep(hold_s)
        return seen
    seen["torch"] = torch.__version__
    seen["devices"] = torch.cuda.device_count()
    if seen["devices"]:
        props = torch.cuda.get_device_properties(0)
        seen["name"] = props.name
        seen["uuid"] = str(props.uuid)
        a = torch.ones(side, side, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        seen["ready_s"] = time.perf_counter() - start
        began = time.perf_counter()
        product = a @ a
        torch.cuda.synchronize()
        seen["matmul_s"] = time.perf_counter() - began
        seen["corner"] = float(product[0, 0].item())
    time.sleep(hold_s)
    return seen


def crash() -> None:
    """End the worker process at once, as a segfault or ``os._exit`` in user code would."""
    import os

    os._exit(3)


def gpu_uuids(environ: Mapping[str, str]) -> dict[str, str]:
    """``nvidia-smi -L``'s devices: index -> UUID (without its ``GPU-`` prefix)."""
    binary = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if binary is None:
        return {}
    listing = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=30).stdout
    found: dict[str, str] = {}
    for line in listing.splitlines():
        head, _, rest = line.partition(":")
        if head.startswith("GPU ") and "UUID: " in rest:
            uuid = rest.split("UUID: ", 1)[1].rstrip(")").strip()
            found[head.split()[1]] = uuid.removeprefix("GPU-")
    return found


class Checks:
    """PASS/FAIL lines and what they saw, for the JSON report."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.rows.append({"check": name, "ok": ok, "detail": detail})
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r["ok"] for r in self.rows)


@contextlib.contextmanager
def endpoint(home: Path, name: str, extra_env: Mapping[str, str]) -> Iterator[str]:
    """``fxbroker endpoint start NAME`` in its own process for the block; yields its id."""
    env = {**os.environ, "FXBROKER_HOME": str(home), **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    log = (home / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from fxbroker.cli import main; raise SystemExit(main())",
         "endpoint", "start", name],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        id_file = endpoint_dir(home, name) / ID_FILE
        deadline = time.monotonic() + 120
        while not id_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"endpoint {name} did not start: see {log.name}")
            time.sleep(0.1)
        yield id_file.read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print(f"  endpoint {name}'s log:", flush=True)
        for line in (home / f"{name}.log").read_text(errors="replace").splitlines()[-8:]:
            print(f"    {line}", flush=True)


def run_probe(client: Client, eid: str, fid: str, hold_s: float = 0.0) -> dict[str, Any]:
    task = client.run(MATRIX, hold_s, endpoint_id=eid, function_id=fid)
    seen: dict[str, Any] = client.get_result(task, timeout_s=TASK_TIMEOUT_S)
    return seen


def pinned_right(seen: Mapping[str, Any], pin: str, uuids: Mapping[str, str]) -> bool:
    """The task saw one device, the one ``nvidia-smi`` lists under ``pin``."""
    return (
        seen.get("visible") == pin
        and seen.get("devices") == 1
        and pin in uuids
        and seen.get("uuid") == uuids[pin]
        and seen.get("corner") == float(MATRIX)
    )


def check_detected(
    checks: Checks, info: StackInfo, home: Path, pins: tuple[str, ...], uuids: Mapping[str, str]
) -> dict[str, Any]:
    extra = {"FXBROKER_ACCELERATORS": ",".join(pins)} if pins != tuple(uuids) else {}
    report: dict[str, Any] = {"pins": list(pins)}
    with endpoint(home, "gpu-detected", extra) as eid, Client(url=info.url, token=info.token) as c:
        fid = c.register_function(probe)
        seen = [run_probe(c, eid, fid) for _ in range(6)]
        report["probes"] = seen
        named = ", ".join(f"{pin}={uuids.get(pin, '?')}" for pin in pins)
        checks.check(
            "one worker per GPU, each task shown its worker's GPU alone",
            all(any(pinned_right(s, pin, uuids) for pin in pins) for s in seen),
            f"{len(pins)} GPU(s) {named}; tasks saw "
            + "; ".join(f"pin {s.get('visible')} devices {s.get('devices')} {s.get('name')}"
                        for s in seen[:2]),
        )  # fmt: skip
        warm = [s["matmul_s"] for s in seen[1:] if "matmul_s" in s]
        if warm and "ready_s" in seen[0]:
            flops = 2 * MATRIX**3 / statistics.median(warm)
            report["first_task_ready_s"] = seen[0]["ready_s"]
            report["warm_ready_s"] = statistics.median(s["ready_s"] for s in seen[1:])
            report["warm_matmul_tflops"] = flops / 1e12
            print(
                f"  first task on a fresh worker: CUDA ready after {seen[0]['ready_s']:.2f} s; "
                f"later tasks {report['warm_ready_s'] * 1000:.1f} ms (median), "
                f"{MATRIX}^3 bf16 product {statistics.median(warm) * 1000:.2f} ms "
                f"= {flops / 1e12:.0f} TFLOP/s",
                flush=True,
            )
        crash_id = c.register_function(crash)
        crashed = c.run(endpoint_id=eid, function_id=crash_id)
        try:
            c.get_result(crashed, timeout_s=TASK_TIMEOUT_S)
            message = "the task returned"
        except TaskFailed as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        after = run_probe(c, eid, fid)
        report["after_crash"] = after
        before_pids = {s["pid"] for s in seen}
        checks.check(
            "a task that kills its worker fails alone; the new worker keeps the pin",
            message != "the task returned"
            and after["pid"] not in before_pids
            and any(pinned_right(after, pin, uuids) for pin in pins),
            f"crash: {message!r}; next task pid {after['pid']} (before {sorted(before_pids)}), "
            f"pin {after.get('visible')}, devices {after.get('devices')}",
        )
    return report


def check_restricted(
    checks: Checks, info: StackInfo, home: Path, uuids: Mapping[str, str]
) -> dict[str, Any]:
    missing = str(max(len(uuids), 1))
    pins = ("0", missing)
    report: dict[str, Any] = {"pins": list(pins)}
    with (
        endpoint(home, "gpu-restricted", {"FXBROKER_ACCELERATORS": ",".join(pins)}) as eid,
        Client(url=info.url, token=info.token) as c,
    ):
        fid = c.register_function(probe)
        run_probe(c, eid, fid)  # the workers are up before the pair is timed
        batch = c.create_batch()
        for _ in pins:
            batch.add(fid, args=(MATRIX, 5.0))
        ids = c.batch_run(eid, batch)
        seen = [c.get_result(t, timeout_s=TASK_TIMEOUT_S) for t in ids]
        report["probes"] = seen
        by_pin = {s.get("visible"): s for s in seen}
        shown = by_pin.get(missing, {})
        checks.check(
            f"a worker pinned to {missing}, an id this node lacks, is shown no GPU",
            len({s["pid"] for s in seen}) == 2
            and pinned_right(by_pin.get("0", {}), "0", uuids)
            and shown.get("devices") == 0,
            "; ".join(f"pid {s['pid']} pin {s.get('visible')} devices {s.get('devices')}"
                      for s in seen),
        )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_pinning", description=__doc__)
    parser.add_argument("--json", type=Path, help="write what the tasks saw here")
    parser.add_argument("--accelerators", help="ids to pin to instead of the detected ones")
    args = parser.parse_args(argv)
    uuids = gpu_uuids(os.environ)
    pins = tuple(args.accelerators.split(",")) if args.accelerators else tuple(uuids)
    print(f"GPUs (nvidia-smi -L): {uuids or 'none'}; detected for the agent: "
          f"{detect_accelerators(os.environ) or 'none'}", flush=True)  # fmt: skip
    if not pins:
        print("no GPU on this node: nothing to check", flush=True)
        return 2
    checks = Checks()
    report: dict[str, Any] = {"gpus": uuids}
    with tempfile.TemporaryDirectory(prefix="fxbroker-gpu-") as tmp:
        home = Path(tmp)
        settings = StackSettings(home=home, web_port=0, ws_port=0, engine="thread", workers=1)
        with running_stack(settings) as info:
            print(f"platform up: web {info.url}, Redis {info.redis_kind}", flush=True)
            report["detected"] = check_detected(checks, info, home, pins, uuids)
            report["restricted"] = check_restricted(checks, info, home, uuids)
    report["checks"] = checks.rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print("all checks passed" if checks.passed else "some checks FAILED", flush=True)
    return 0 if checks.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
