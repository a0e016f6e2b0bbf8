"""Which TCP peers a process and its descendants are connected to, from the operating
system's own view (Linux ``/proc``), sampled in a thread for as long as a test runs.

A process's sockets are the ``socket:[inode]`` links in ``/proc/<pid>/fd``; the connection
behind each inode is a line of ``/proc/<pid>/net/tcp`` (and ``tcp6``), whose fourth field is
the remote address as hex ``address:port``. Descendants are found through
``/proc/<pid>/task/<tid>/children``. A sample is taken every ``interval_s``: a connection
opened and closed between two samples is not seen, so this watches connections a process
holds (a Redis client's pooled connections are held for the client's life).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
ESTABLISHED_OR_OPENING = {"01", "02", "03"}  # ESTABLISHED, SYN_SENT, SYN_RECV


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, ... (as found now)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:  # a process that exits meanwhile takes its /proc folder (and its children) along
            listed = list((PROC / str(parent) / "task").glob("*/children"))
        except OSError:
            continue
        for children in listed:
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` has open."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(PROC / str(pid) / "fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def remote_ports(pid: int) -> set[int]:
    """The remote ports of the TCP connections ``pid`` holds (IPv4 and IPv6)."""
    inodes = socket_inodes(pid)
    if not inodes:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if inode in inodes and state in ESTABLISHED_OR_OPENING:
                    ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


@dataclass
class SocketWatch:
    """Samples the remote ports of ``pid`` and its descendants until :meth:`stop`."""

    pid: int
    interval_s: float = 0.02
    samples: int = 0
    processes: set[int] = field(default_factory=set)
    """Every process seen: the watched one and each descendant."""
    ports: Counter[int] = field(default_factory=Counter)
    """Remote port -> the number of samples in which some watched process held it."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SocketWatch:
        self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        pids = [self.pid, *descendants(self.pid)]
        self.processes.update(pids)
        held: set[int] = set()
        for pid in pids:
            held |= remote_ports(pid)
        self.ports.update(held)
        self.samples += 1
