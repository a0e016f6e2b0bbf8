"""The dev stack's local agent reaches its endpoint through the gateway with the endpoint's
credential: the one its first run was issued, reused by later runs while it still opens the
endpoint, and replaced (rotated) when it no longer does."""

from __future__ import annotations

from pathlib import Path

import httpx

from fxbroker.stack import DevStack, StackSettings
from fxbroker.workload import square
from sdk.asyncio_client import AsyncClient
from service_common.tokens import ENDPOINT_SESSION_PATH


async def _serve_one_task(settings: StackSettings) -> str:
    """Run the stack, run one task on its local endpoint; the credential file's content."""
    async with DevStack(settings) as stack:
        info = stack.info
        async with AsyncClient(url=info.url, token=info.token, ws_url=info.ws_url) as client:
            fid = await client.register_function(square)
            assert await client.run(7, endpoint_id=info.endpoint_id, function_id=fid) == 49
        credential = (settings.home / "endpoints" / "local" / "credential").read_text().strip()
        async with httpx.AsyncClient(base_url=info.url) as http:
            reply = await http.get(
                ENDPOINT_SESSION_PATH, headers={"Authorization": f"Bearer {credential}"}
            )
        assert reply.json()["endpoint_id"] == info.endpoint_id
    return credential


async def test_the_local_agent_keeps_a_live_credential_and_replaces_a_dead_one(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    settings = StackSettings(
        home=tmp_path / "home", web_port=0, ws_port=0, redis_url=redis_url,
        key_prefix=key_prefix, engine="thread", workers=1, max_concurrency=4,
    )  # fmt: skip
    first = await _serve_one_task(settings)
    assert first.startswith("fxep_")
    assert await _serve_one_task(settings) == first  # still live: kept
    path = settings.home / "endpoints" / "local" / "credential"
    path.write_text("fxep_" + "x" * 43 + "\n")  # a credential that opens nothing
    third = await _serve_one_task(settings)
    assert third.startswith("fxep_") and third != first
