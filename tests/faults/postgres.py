"""A private PostgreSQL cluster the fault tests may stop and start again: ``initdb`` into a
temporary folder, on a free loopback port (the private Redis is :mod:`tests.private_redis`).

Nothing here touches the PostgreSQL a developer or CI already runs: the cluster is created,
started and stopped here, with its own data folder, port and socket folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(found):
        if (bindir / "initdb").exists():
            return bindir
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own: ``initdb`` into a temporary folder, listening on
    127.0.0.1 and a free port (its socket in that folder too), ``fsync=off``.

    PostgreSQL refuses to run as root: when this process is root, its commands run as the
    ``postgres`` user, which owns the folder."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fxb-fault-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=START_TIMEOUT_S * 2)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-o", options,
            "-w", "-t", str(int(START_TIMEOUT_S)), *args,
        )  # fmt: skip

    def start(self) -> None:
        """Start and return once it accepts connections (``pg_ctl -w``)."""
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop with ``-m fast``: open sessions are ended, the cluster shuts down cleanly."""
        self._pg_ctl("stop", "-m", "fast")

    def alive(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.alive():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
