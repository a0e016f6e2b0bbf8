"""The served OpenAPI document: it names every route, and the schemathesis command, run with
every check over /v1, /v2 and /v3, finds nothing: no 5xx, no answer the document does not
describe, no schema-valid body refused, no schema-invalid one accepted, a 405 with the right
``Allow`` for every method the document does not name, no route that ignores its token, no
user reading another's objects, ...
(bounded, deterministic examples, against a real server on a free port)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from service_common.tokens import ENDPOINT_SESSION_PATH
from web_service.accounts import create_user
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser

MAX_EXAMPLES = 20
"""Per operation and phase; with 48 operations the run takes about half a minute."""
RUN_TIMEOUT_S = 100
NEVER_2XX = ("/v2/get_amqp_result_connection_url", "/v2/taskgroup/{task_group_id}")
"""Operations that answer no 2xx in this run (no AMQP; no link gives a task group's id): the
run would move on from each user to none at all, and see only 401s; they keep one user."""


@pytest.fixture
def web_settings(web_settings: WebSettings) -> WebSettings:
    """The body limit at its default: every body the document allows fits in it (a 413 is
    neither the acceptance a schema-valid body is owed nor a rejection the checks expect)."""
    return replace(web_settings, max_body_bytes=WebSettings.max_body_bytes)


async def test_the_document_describes_every_route(alice: ApiUser) -> None:
    document = (await alice.client.get("/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    app = create_app(WebSettings(database_url="sqlite:///unused.db", redis_url="redis://127.0.0.1"))
    served = {
        (path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for path in [route.path]
        if not path.startswith("/dashboard")  # the browser page and its own JSON, not the API
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    limits = document["components"]["schemas"]["SubmitRequest"]["properties"]["tasks"]
    assert limits["maxItems"] == 50  # the settings' max_tasks_per_batch
    compute_submit = document["components"]["schemas"]["ComputeSubmitRequest"]["properties"]
    assert compute_submit["create_queue"]["enum"] == [False]  # no FXBROKER_AMQP_URL here
    submit = document["paths"]["/v1/endpoints/{endpoint_id}/submit"]["post"]["responses"]
    assert set(submit) == {"200", "400", "401", "404", "413", "422", "429", "503", "default"}
    assert set(document["paths"]["/healthz"]["get"]["responses"]) == {"200", "default"}


def write_config(directory: Path, tokens: dict[str, str], credential: str) -> None:
    """The command's config in ``directory``: the users and which operation takes whose token.

    Two users are peers that must not see each other's objects (object_level_authorization
    reads what one made as the other). The agents' route takes an endpoint credential. No ids
    are pinned: a pinned id would replace those the stateful phase takes from the answers that
    created them, and a real task's long poll outlasts the request timeout."""
    users = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
        for name, token in tokens.items()
    ]
    (directory / "users.json").write_text(json.dumps({"auth": users}))
    first = next(iter(tokens.values()))
    headers = {ENDPOINT_SESSION_PATH: credential} | dict.fromkeys(NEVER_2XX, first)
    (directory / "schemathesis.toml").write_text(
        f'[auth.wfc]\npath = "users.json"\npeers = {json.dumps(list(tokens))}\n'
        + "".join(
            f'\n[[operations]]\ninclude-path = "{path}"\n'
            f'headers = {{ Authorization = "Bearer {token}" }}\n'
            for path, token in headers.items()
        )
    )


def test_schemathesis_with_every_check_finds_nothing(
    server_url: str, web_settings: WebSettings, tmp_path: Path
) -> None:
    tokens = {
        name: asyncio.run(create_user(web_settings.database_url, name))[1]
        for name in ("fuzzer", "peer")
    }
    with httpx.Client(
        base_url=server_url, headers={"Authorization": f"Bearer {tokens['fuzzer']}"}
    ) as http:
        registered = http.post("/v1/endpoints", json={"name": "fuzzed agents"})
    credential = registered.json()["credential"]
    write_config(tmp_path, tokens, credential)
    repository = Path(__file__).resolve().parents[2]
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server_url}/v1/openapi.json",
        "--checks=all",
        f"--max-examples={MAX_EXAMPLES}",
        "--generation-deterministic",
        "--workers=1",
        "--no-color",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(repository), os.environ.get("PYTHONPATH")])
        ),
        "SCHEMATHESIS_HOOKS": "tests.web.openapi_formats",
    }
    run = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Authentication failed" not in run.stdout, run.stdout  # no route seen only as 401s
    assert "will not run" not in run.stdout + run.stderr, run.stdout + run.stderr  # every check
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in run.stdout, run.stdout
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert selected is not None, run.stdout
    assert len(set(selected.groups())) == 1 and int(selected[1]) > 40, run.stdout
    with httpx.Client(base_url=server_url) as client:
        assert client.get("/healthz").status_code == 200
