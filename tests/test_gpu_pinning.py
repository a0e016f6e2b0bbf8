"""``python -m bench.gpu_pinning``: the check of GPU pinning a GPU node runs. Here, with no
GPU, it is run with ``--accelerators 0`` through real ``fxbroker endpoint start``
processes: every task reports the pin of its worker, a crash is replaced by a worker with
the same pin, and the checks read FAIL because no device is visible (no check can pass
without one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.gpu_pinning import MATRIX, gpu_uuids, main, pinned_right
from tests.agent.helpers import fake_nvidia_smi


def test_nvidia_smi_listing_gives_each_index_its_uuid(tmp_path: Path) -> None:
    fake_nvidia_smi(
        tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-e659-aa)", "GPU 1: NVIDIA H200 (UUID: GPU-77f0-bb)"
    )
    assert gpu_uuids({"PATH": str(tmp_path)}) == {"0": "e659-aa", "1": "77f0-bb"}
    assert gpu_uuids({"PATH": str(tmp_path / "none")}) == {}


def test_a_task_is_pinned_right_only_when_it_saw_its_pins_device_alone() -> None:
    uuids = {"0": "aa", "1": "bb"}
    right = {"visible": "1", "devices": 1, "uuid": "bb", "corner": float(MATRIX)}
    assert pinned_right(right, "1", uuids)
    assert not pinned_right(right, "0", uuids)
    assert not pinned_right({**right, "devices": 2}, "1", uuids)
    assert not pinned_right({**right, "uuid": "aa"}, "1", uuids)
    assert not pinned_right({**right, "corner": 0.0}, "1", uuids)
    assert not pinned_right({"visible": "1", "devices": 0}, "1", uuids)


@pytest.mark.timeout(180)
def test_the_check_runs_endpoints_that_pin_their_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = os.environ["PATH"].split(os.pathsep)
    no_smi = [f for f in folders if not (Path(f) / "nvidia-smi").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(no_smi))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report_file = tmp_path / "report.json"
    assert main(["--json", str(report_file)]) == 2  # no GPU found: nothing is checked

    assert main(["--accelerators", "0", "--json", str(report_file)]) == 1
    report = json.loads(report_file.read_text())
    detected = report["detected"]
    assert {p["visible"] for p in detected["probes"]} == {"0"}
    assert len({p["pid"] for p in detected["probes"]}) == 1  # one worker ran them all
    assert detected["after_crash"]["visible"] == "0"
    assert detected["after_crash"]["pid"] != detected["probes"][0]["pid"]
    restricted = report["restricted"]["probes"]
    assert sorted(p["visible"] for p in restricted) == ["0", "1"]
    assert len({p["pid"] for p in restricted}) == 2
    assert [row["ok"] for row in report["checks"]] == [False, False, False]
    assert "WorkerLost" in report["checks"][1]["detail"]
