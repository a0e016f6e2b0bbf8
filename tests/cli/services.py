"""The ``fxbroker`` command as a process, and the web and ws services it talks to
(the fixtures that start them are in conftest.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import httpx

FXBROKER = [sys.executable, "-m", "fxbroker.cli"]


@dataclass(frozen=True)
class WebProcess:
    url: str
    token: str
    env: dict[str, str]

    def session(self, credential: str) -> httpx.Response:
        """``GET /v1/endpoint_session`` with ``credential``: what the gateway will ask."""
        return httpx.get(
            f"{self.url}/v1/endpoint_session", headers={"Authorization": f"Bearer {credential}"}
        )
