"""The platform as real processes the fault tests kill and restart: ``fxbroker web``,
``fxbroker ws`` and ``fxbroker endpoint start``, against a private Redis and database.

Each piece runs in a process group of its own, so a kill takes its children with it (the
agent's worker processes) and nothing outlives the test. A piece killed and started again
keeps its port: clients and agents find it where it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
FXBROKER = [sys.executable, "-m", "fxbroker.cli"]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
ENDPOINT_NAME = "faults"

Piece = Literal["web", "ws", "agent"]


@dataclass
class Process:
    """One piece of the platform: how to start it, and the process running it now."""

    name: Piece
    argv: list[str]
    port: int | None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Platform:
    """web, ws and one endpoint agent, started by :meth:`start`, stopped by :meth:`close`.

    ``env`` is what every piece (and a client subprocess) runs with; ``url``, ``ws_url``,
    ``token`` and ``endpoint_id`` are known once :meth:`start` returned."""

    def __init__(
        self,
        *,
        redis_url: str,
        database_url: str,
        home: Path,
        service_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.prefix = f"fxf-{uuid.uuid4().hex[:10]}"
        web_port, ws_port = free_port(), free_port()
        self.url, self.ws_url = f"http://127.0.0.1:{web_port}", f"ws://127.0.0.1:{ws_port}"
        self.token = ""
        self.endpoint_id = ""
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env: dict[str, str] = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "FXBROKER_KEY_PREFIX": self.prefix,
            "FXBROKER_WS_URL": self.ws_url,
            "FXBROKER_WEB_URL": self.url,
            "FXBROKER_URL": self.url,
            "FXBROKER_HOME": str(home / "fxbroker"),
            "FXBROKER_WORKERS": "2",
            "FXBROKER_ACCELERATORS": "",
            **(service_env or {}),
        }
        self._log: IO[bytes] = (home / "platform.log").open("ab")
        self.pieces: dict[Piece, Process] = {
            "web": Process("web", ["web", "--port", str(web_port)], web_port),
            "ws": Process("ws", ["ws", "--port", str(ws_port)], ws_port),
            "agent": Process("agent", ["endpoint", "start", ENDPOINT_NAME], None),
        }

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database, create a user, start web and ws, then the agent (which
        registers the endpoint), and return once the endpoint's id is known."""
        self._cli("db", "upgrade")
        self.token = self._cli("user", "create", "faults").strip()
        self.env["FXBROKER_TOKEN"] = self.token
        self.start_piece("web")
        self.start_piece("ws")
        self.start_piece("agent")
        id_file = Path(self.env["FXBROKER_HOME"]) / "endpoints" / ENDPOINT_NAME / "endpoint_id"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not id_file.exists() or not id_file.read_text().strip():
            if time.monotonic() > deadline or not self.pieces["agent"].alive():
                raise RuntimeError(f"the agent did not register its endpoint; see {self.log}")
            time.sleep(0.05)
        self.endpoint_id = id_file.read_text().strip()

    def agent_environment(self) -> dict[str, str]:
        """The agent's: no Redis, no database, no key prefix; it reaches the platform only
        through the ws service's gateway, with the credential its first start stored."""
        private = {"REDIS_URL", "DATABASE_URL", "FXBROKER_KEY_PREFIX"}
        return {k: v for k, v in self.env.items() if k not in private}

    @property
    def log(self) -> Path:
        """Where every piece writes its output (one file, in the order written)."""
        return self.home / "platform.log"

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [*FXBROKER, *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
            timeout=START_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"fxbroker {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def start_piece(self, name: Piece) -> float:
        """Start ``name`` (again, on the same port); returns the monotonic time at which it
        was ready (listening, for web and ws; started, for the agent)."""
        piece = self.pieces[name]
        if piece.alive():
            raise RuntimeError(f"{name} is already running")
        env = self.agent_environment() if name == "agent" else self.env
        piece.proc = subprocess.Popen(
            [*FXBROKER, *piece.argv], env=env, cwd=ROOT, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip
        piece.starts += 1
        if piece.port is not None:
            wait_for_port(piece.port, START_TIMEOUT_S)
        return time.monotonic()

    def kill_piece(self, name: Piece) -> None:
        """SIGKILL ``name`` and its process group (for the agent: its workers), and reap it."""
        proc = self.pieces[name].proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{name} is not running")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)

    def dead_pieces(self) -> dict[str, int | None]:
        """Each piece that is not running now, with its exit status."""
        return {
            name: (piece.proc.poll() if piece.proc is not None else None)
            for name, piece in self.pieces.items()
            if not piece.alive()
        }

    def close(self) -> None:
        """SIGTERM every piece (agent first), wait, SIGKILL what is left; close the log."""
        order: list[Piece] = ["agent", "ws", "web"]
        for name in order:
            proc = self.pieces[name].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in order:
            proc = self.pieces[name].proc
            if proc is None:
                continue
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            # Whatever is left in its group (a hung piece, the agent's workers) goes too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> Platform:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
