"""The served OpenAPI document: it names every route, and schemathesis finds no 5xx and no
answer that violates it (bounded examples, against a real server on a free port)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from web_service.accounts import create_user
from web_service.app import create_app
from web_service.settings import WebSettings

from .helpers import ApiUser

MAX_EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


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


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server_url: str, web_settings: WebSettings
) -> None:
    _, token = asyncio.run(create_user(web_settings.database_url, "fuzzer"))
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{server_url}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 20
    settings = hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings
            @hypothesis.given(case=operation.as_strategy(mode))
            def check(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(base_url=server_url, headers=headers, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                # an operation with no inputs has no invalid ones to send
                assert mode is GenerationMode.NEGATIVE
                assert not operation.path_parameters and not operation.body
    with httpx.Client(base_url=server_url) as client:
        assert client.get("/healthz").status_code == 200
