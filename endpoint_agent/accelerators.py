"""Which accelerators (GPUs) this node has, for one worker process per accelerator.

:func:`detect_accelerators` reads ``CUDA_VISIBLE_DEVICES`` when it is set (a batch
scheduler's allocation, or an operator's choice), else asks ``nvidia-smi -L`` (one
``GPU <index>: ...`` line per device). The
composition root calls it when an endpoint's configuration names no accelerators; the agent
itself never guesses (:class:`~endpoint_agent.settings.AgentSettings` takes the ids).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping

from service_common.settings import split_names

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)
NVIDIA_SMI_TIMEOUT_S = 10.0


def parse_nvidia_smi(listing: str) -> tuple[str, ...]:
    """The device indexes in the output of ``nvidia-smi -L``."""
    return tuple(_GPU_LINE.findall(listing))


def detect_accelerators(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The accelerator ids of this node: ``CUDA_VISIBLE_DEVICES`` (comma-separated) when it
    is set, else the indexes ``nvidia-smi -L`` lists (found on ``environ``'s ``PATH``), else
    none. A ``CUDA_VISIBLE_DEVICES`` that is set restricts the node to those devices, so it
    wins over the full listing."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = split_names(visible)
        return tuple(i for i in ids if i != "-1")
    binary = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if binary is None:
        return ()
    try:
        done = subprocess.run(
            [binary, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
            env=dict(environ),
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if done.returncode != 0:
        return ()
    return parse_nvidia_smi(done.stdout)
